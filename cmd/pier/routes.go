package main

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// apiRoute is one route of /v1/pier/routes.
type apiRoute struct {
	Host        string
	Path        string
	Service     string
	Port        string
	Strip       string
	Prepend     string
	Source      string
	Key         string
	Error       string
	MaxFails    int
	FailTimeout string

	TLS           bool   `json:",omitempty"`
	TLSSkipVerify bool   `json:",omitempty"`
	TLSServerName string `json:",omitempty"`
	TLSCAFile     string `json:",omitempty"`
	Proto         string `json:",omitempty"`

	Failover *struct {
		Nearest     int
		Datacenters []string
	} `json:",omitempty"`
	ServingFrom string `json:",omitempty"`

	Total     int
	Instances []apiInstance
}

// apiInstance is one healthy instance of a route.
type apiInstance struct {
	ID        string
	Node      string
	Addr      string
	Weight    int64
	InFlight  int64
	Requests  uint64
	DownUntil *string
}

// apiTCPRoute is one route of /v1/pier/tcp-routes.
type apiTCPRoute struct {
	Listen       string
	Addr         string
	SNI          string
	Service      string
	Source       string
	Key          string
	Error        string
	IdleTimeout  string
	DrainTimeout string
	Open         int
	Total        int
	Instances    []apiInstance
}

func runRoutes(args []string, stdout, stderr io.Writer) error {
	fs, c, cf, err := apiCommand("routes", args, stderr, nil)
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	var rs []apiRoute
	if err := c.do("GET", "/v1/pier/routes", nil, &rs); err != nil {
		if isStatus(err, http.StatusNotFound) {
			return fmt.Errorf("the agent at %s runs no proxy (give it a proxy section or -proxy-addr)", c.base)
		}
		return err
	}
	if cf.format == "json" {
		if rs == nil {
			rs = []apiRoute{}
		}
		return printJSON(stdout, rs)
	}
	tw := newTable(stdout, "Route\tService\tRewrite\tSource\tHealthy\tInstances")
	var bad []apiRoute
	for _, r := range rs {
		if r.Error != "" {
			bad = append(bad, r)
			continue
		}
		route := r.Host + r.Path
		if r.Host == "" {
			route = "*" + r.Path
		}
		rewrite := ""
		if r.Strip != "" {
			rewrite = "strip " + r.Strip
		}
		if r.Prepend != "" {
			rewrite = strings.TrimSpace(rewrite + " prepend " + r.Prepend)
		}
		svc := r.Service
		if r.Port != "" {
			svc += " port " + r.Port
		}
		scheme := "https"
		if r.Proto == "grpc" {
			scheme = "grpc, tls"
		}
		switch {
		case r.TLSSkipVerify:
			svc += " (" + scheme + ", unverified)"
		case r.TLS:
			svc += " (" + scheme + ")"
		case r.Proto == "grpc":
			svc += " (grpc)"
		}
		if r.ServingFrom != "" {
			// Its local instances are gone: it sends to another datacenter's.
			svc += " (failed over to " + r.ServingFrom + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\n", route, svc, rewrite, r.Source, len(r.Instances), r.Total, instancesText(r.Instances))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range bad {
		fmt.Fprintf(stdout, "not served: %s: %s\n", r.Key, r.Error)
	}
	var trs []apiTCPRoute
	if err := c.do("GET", "/v1/pier/tcp-routes", nil, &trs); err != nil || len(trs) == 0 {
		return nil // an agent from before TCP routes has none to show
	}
	fmt.Fprintln(stdout)
	tw = newTable(stdout, "TCP route\tService\tSource\tOpen\tHealthy\tInstances")
	var tbad []apiTCPRoute
	for _, r := range trs {
		if r.Error != "" {
			tbad = append(tbad, r)
			continue
		}
		route := r.Addr
		switch {
		case r.SNI != "" && r.Addr != "":
			route = r.SNI + " on " + r.Addr
		case r.SNI != "":
			route = r.SNI + " (tls listener)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d/%d\t%s\n", route, r.Service, r.Source, r.Open, len(r.Instances), r.Total, instancesText(r.Instances))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range tbad {
		fmt.Fprintf(stdout, "not served: %s: %s\n", r.Key, r.Error)
	}
	return nil
}

// instancesText lists instances with their weight, load and ejection when
// they are worth a note.
func instancesText(is []apiInstance) string {
	var ins []string
	for _, in := range is {
		s := in.Addr
		var notes []string
		if in.Weight != 1 {
			notes = append(notes, "weight "+strconv.FormatInt(in.Weight, 10))
		}
		if in.InFlight > 0 {
			notes = append(notes, strconv.FormatInt(in.InFlight, 10)+" in flight")
		}
		if in.DownUntil != nil {
			notes = append(notes, "out until "+*in.DownUntil)
		}
		if len(notes) > 0 {
			s += " (" + strings.Join(notes, ", ") + ")"
		}
		ins = append(ins, s)
	}
	return strings.Join(ins, ", ")
}
