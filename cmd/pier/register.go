package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"sigs.k8s.io/yaml"
)

func runRegister(args []string, stdout, stderr io.Writer) error {
	var (
		name, id, address string
		port              int
		tags, meta        stringList
	)
	fs, c, _, err := apiCommand("register", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&name, "name", "", "service name")
		fs.StringVar(&id, "id", "", "service ID (default: the name)")
		fs.StringVar(&address, "address", "", "service address (default: the node's)")
		fs.IntVar(&port, "port", 0, "service port")
		fs.Var(&tags, "tag", "a tag (repeatable)")
		fs.Var(&meta, "meta", "key=value metadata (repeatable)")
	})
	if err != nil {
		return err
	}
	var defs []map[string]any
	switch {
	case fs.NArg() > 1:
		return usageError{"give one definition file, or flags"}
	case fs.NArg() == 1:
		if name != "" {
			return usageError{"give a definition file or -name, not both"}
		}
		if defs, err = readDefinitions(fs.Arg(0)); err != nil {
			return err
		}
	case name == "":
		return usageError{"-name is required (or give a definition file)"}
	default:
		def := map[string]any{"Name": name}
		if id != "" {
			def["ID"] = id
		}
		if address != "" {
			def["Address"] = address
		}
		if port != 0 {
			def["Port"] = port
		}
		if len(tags) > 0 {
			def["Tags"] = []string(tags)
		}
		if len(meta) > 0 {
			m := map[string]string{}
			for _, kv := range meta {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return usageError{fmt.Sprintf("-meta %q: want key=value", kv)}
				}
				m[k] = v
			}
			def["Meta"] = m
		}
		defs = []map[string]any{def}
	}
	for _, def := range defs {
		if err := c.do("PUT", "/v1/agent/service/register", def, nil); err != nil {
			return err
		}
		label, _ := def["Name"].(string)
		if v, ok := def["ID"].(string); ok && v != "" {
			label = v
		}
		fmt.Fprintf(stdout, "Registered service: %s\n", label)
	}
	return nil
}

// readDefinitions reads a service definition file: one service, or Consul's
// {"service": {...}} or {"services": [...]} forms, in JSON or YAML.
func readDefinitions(path string) ([]map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	var top map[string]any
	if err := json.Unmarshal(j, &top); err != nil || top == nil {
		return nil, fmt.Errorf("%s: expected a service definition (a mapping)", path)
	}
	var out []map[string]any
	for k, v := range top {
		switch strings.ToLower(k) {
		case "service":
			m, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%s: service: expected a mapping", path)
			}
			out = append(out, m)
		case "services":
			list, ok := v.([]any)
			if !ok {
				return nil, fmt.Errorf("%s: services: expected a list", path)
			}
			for i, e := range list {
				m, ok := e.(map[string]any)
				if !ok {
					return nil, fmt.Errorf("%s: services[%d]: expected a mapping", path, i)
				}
				out = append(out, m)
			}
		}
	}
	if out == nil {
		out = []map[string]any{top}
	}
	return out, nil
}
