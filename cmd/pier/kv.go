package main

import (
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/pier-dev/pier/registry"
)

// kvPair is the part of Consul's KVPair the CLI shows.
type kvPair struct {
	Key         string
	Flags       uint64
	Value       []byte
	CreateIndex uint64
	ModifyIndex uint64
}

func runKV(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"give a subcommand: get, put, delete, list, export or import"}
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "get":
		return kvGet(args, stdout, stderr)
	case "put":
		return kvPut(args, stdout, stderr)
	case "delete":
		return kvDelete(args, stdout, stderr)
	case "list":
		return kvList(args, stdout, stderr)
	case "export":
		return kvExport(args, stdout, stderr)
	case "import":
		return kvImport(args, stdout, stderr)
	}
	return usageError{fmt.Sprintf("unknown kv subcommand %q: want get, put, delete, list, export or import", sub)}
}

func kvPath(key string) string {
	return "/v1/kv/" + (&url.URL{Path: key}).EscapedPath()
}

// getKV GETs path into out; a 404 (no key there) leaves out as it is.
func getKV(c *client, path string, out any) error {
	if err := c.do("GET", path, nil, out); err != nil && !isStatus(err, http.StatusNotFound) {
		return err
	}
	return nil
}

func kvGet(args []string, stdout, stderr io.Writer) error {
	var recurse bool
	fs, c, cf, err := apiCommand("kv get", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&recurse, "recurse", false, "print every key under the prefix, as key:value")
	})
	if err != nil {
		return err
	}
	if fs.NArg() != 1 && !(recurse && fs.NArg() == 0) {
		return usageError{"give one key"}
	}
	key := fs.Arg(0)
	path := kvPath(key)
	if recurse {
		path += "?recurse"
	}
	var pairs []kvPair
	if err := c.do("GET", path, nil, &pairs); err != nil {
		if isStatus(err, http.StatusNotFound) {
			return fmt.Errorf("no key exists at %q", key)
		}
		return err
	}
	if cf.format == "json" {
		return printJSON(stdout, pairs)
	}
	for _, p := range pairs {
		if recurse {
			fmt.Fprintf(stdout, "%s:%s\n", p.Key, p.Value)
		} else {
			fmt.Fprintf(stdout, "%s\n", p.Value)
		}
	}
	return nil
}

func kvPut(args []string, stdout, stderr io.Writer) error {
	var flags uint64
	var cas bool
	var modifyIndex uint64
	fs, c, _, err := apiCommand("kv put", args, stderr, func(fs *flag.FlagSet) {
		fs.Uint64Var(&flags, "flags", 0, "opaque flags stored with the value")
		fs.BoolVar(&cas, "cas", false, "write only if the key's modify index is -modify-index (0: only if absent)")
		fs.Uint64Var(&modifyIndex, "modify-index", 0, "the modify index -cas compares with")
	})
	if err != nil {
		return err
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		return usageError{"give a key and a value (a value of - or none reads standard input)"}
	}
	key := fs.Arg(0)
	var value []byte
	if fs.NArg() == 2 && fs.Arg(1) != "-" {
		value = []byte(fs.Arg(1))
	} else if value, err = io.ReadAll(os.Stdin); err != nil {
		return err
	}
	q := url.Values{}
	if flags != 0 {
		q.Set("flags", strconv.FormatUint(flags, 10))
	}
	if cas {
		q.Set("cas", strconv.FormatUint(modifyIndex, 10))
	}
	path := kvPath(key)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var ok bool
	if err := c.do("PUT", path, value, &ok); err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%q was not written: its modify index is not %d", key, modifyIndex)
	}
	fmt.Fprintf(stdout, "Success! Data written to: %s\n", key)
	return nil
}

func kvDelete(args []string, stdout, stderr io.Writer) error {
	var recurse bool
	fs, c, _, err := apiCommand("kv delete", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&recurse, "recurse", false, "delete every key under the prefix")
	})
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"give one key (or prefix, with -recurse)"}
	}
	key := fs.Arg(0)
	path := kvPath(key)
	if recurse {
		path += "?recurse"
	}
	if err := c.do("DELETE", path, nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Success! Deleted key: %s\n", key)
	return nil
}

func kvList(args []string, stdout, stderr io.Writer) error {
	var sep string
	fs, c, cf, err := apiCommand("kv list", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&sep, "separator", "", "list keys only up to the first separator past the prefix, such as /")
	})
	if err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usageError{"give at most one prefix"}
	}
	path := kvPath(fs.Arg(0)) + "?keys"
	if sep != "" {
		path += "&separator=" + url.QueryEscape(sep)
	}
	keys := []string{} // stays empty when nothing is there
	if err := getKV(c, path, &keys); err != nil {
		return err
	}
	if cf.format == "json" {
		return printJSON(stdout, keys)
	}
	fmt.Fprint(stdout, strings.Join(keys, "\n"))
	if len(keys) > 0 {
		fmt.Fprintln(stdout)
	}
	return nil
}

// exported is one entry of `consul kv export`'s JSON, which
// `consul kv import` and `pier kv import` read back.
type exported struct {
	Key   string `json:"key"`
	Flags uint64 `json:"flags"`
	Value string `json:"value"` // base64
}

// validJSONKey reports whether a JSON string holds only UTF-8: no invalid
// byte, no escaped lone surrogate (the decoder makes those U+FFFD) and no
// escaped U+FFFD.
func validJSONKey(raw []byte) bool {
	if !utf8.Valid(raw) {
		return false
	}
	for i := 0; i+6 <= len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		if raw[i+1] != 'u' {
			i++ // an escape of one character, such as \\
			continue
		}
		r, err := strconv.ParseUint(string(raw[i+2:i+6]), 16, 16)
		if err != nil {
			return false
		}
		switch {
		case r >= 0xD800 && r < 0xDC00: // a high surrogate: a low one must follow
			if i+12 > len(raw) || raw[i+6] != '\\' || raw[i+7] != 'u' {
				return false
			}
			lo, err := strconv.ParseUint(string(raw[i+8:i+12]), 16, 16)
			if err != nil || lo < 0xDC00 || lo > 0xDFFF {
				return false
			}
			i += 11
		case r >= 0xDC00 && r <= 0xDFFF:
			return false
		case r == 0xFFFD:
			// How Go's encoder (consul kv export's) writes an invalid
			// byte; a real U+FFFD it writes as itself.
			return false
		default:
			i += 5
		}
	}
	return true
}

func kvExport(args []string, stdout, stderr io.Writer) error {
	fs, c, _, err := apiCommand("kv export", args, stderr, nil)
	if err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usageError{"give at most one prefix"}
	}
	var pairs []kvPair
	if err := getKV(c, kvPath(fs.Arg(0))+"?recurse", &pairs); err != nil {
		return err
	}
	out := make([]exported, 0, len(pairs))
	for _, p := range pairs {
		out = append(out, exported{Key: p.Key, Flags: p.Flags, Value: base64.StdEncoding.EncodeToString(p.Value)})
	}
	return printJSON(stdout, out)
}

// kvImport reads `consul kv export`'s JSON (@file, - or none for standard
// input, or the JSON itself) and writes every entry, under -prefix if
// given. The whole input is checked before the first write, so a mistake
// anywhere in it writes nothing.
func kvImport(args []string, stdout, stderr io.Writer) error {
	var prefix string
	fs, c, _, err := apiCommand("kv import", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&prefix, "prefix", "", "a prefix put before every key imported")
	})
	if err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usageError{"give the export: @file, - for standard input, or the JSON itself"}
	}
	src := fs.Arg(0)
	if src == "" {
		src = "-"
	}
	data, err := readArg("", src)
	if err != nil {
		return err
	}
	var in []exported
	if err := json.Unmarshal([]byte(data), &in); err != nil {
		return fmt.Errorf("the export is not consul kv export's JSON (a list of {key, flags, value}): %v", err)
	}
	// The decoder turns a key's invalid UTF-8 into U+FFFD: look at the keys
	// as written, so that no key is imported under another name.
	var raw []struct {
		Key json.RawMessage `json:"key"`
	}
	json.Unmarshal([]byte(data), &raw)
	values := make([][]byte, len(in))
	for i, e := range in {
		if e.Key == "" && prefix == "" {
			return fmt.Errorf("entry %d: the key is empty", i)
		}
		if i < len(raw) && !validJSONKey(raw[i].Key) {
			return fmt.Errorf("entry %d (%s): the key is not valid UTF-8", i, raw[i].Key)
		}
		if err := registry.ValidKey(prefix + e.Key); err != nil {
			return fmt.Errorf("entry %d (%q): %v", i, prefix+e.Key, err)
		}
		if values[i], err = base64.StdEncoding.DecodeString(e.Value); err != nil {
			return fmt.Errorf("entry %d (%q): value is not base64: %v", i, e.Key, err)
		}
	}
	for i, e := range in {
		key := prefix + e.Key
		path := kvPath(key)
		if e.Flags != 0 {
			path += "?flags=" + strconv.FormatUint(e.Flags, 10)
		}
		if err := c.do("PUT", path, values[i], nil); err != nil {
			return fmt.Errorf("%q: %w (the %d entries before it were imported)", key, err, i)
		}
		fmt.Fprintf(stdout, "Imported: %s\n", key)
	}
	return nil
}
