package docker

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry"
)

// ctr builds a container from a compact description for the table tests.
func ctr(name, image string, env []string, labels map[string]string, ports map[string]string) *container {
	c := &container{ID: "c0ffee" + name, Name: "/" + name}
	c.Config.Image, c.Config.Env, c.Config.Labels = image, env, labels
	c.State.Running = true
	c.NetworkSettings.IPAddress = "172.17.0.5"
	c.NetworkSettings.Ports = map[string][]struct {
		HostIP   string `json:"HostIp"`
		HostPort string
	}{}
	for k, hp := range ports {
		if hp == "" {
			c.NetworkSettings.Ports[k] = nil // exposed, not published
			continue
		}
		ip, p, _ := strings.Cut(hp, ":")
		c.NetworkSettings.Ports[k] = append(c.NetworkSettings.Ports[k], struct {
			HostIP   string `json:"HostIp"`
			HostPort string
		}{ip, p})
	}
	return c
}

func TestServices(t *testing.T) {
	n := naming{Hostname: "viserion", Address: "10.0.0.2"}
	type svc struct {
		ID, Name, Addr string
		Port           int
		Tags           []string
		Meta           map[string]string
	}
	cases := []struct {
		name   string
		c      *container
		n      naming
		want   []svc
		errors int
	}{
		{"the seed's redis: SERVICE_NAME, TAGS, REGION into Meta",
			ctr("redis-0", "redis", []string{"SERVICE_NAME=db", "SERVICE_TAGS=master", "SERVICE_REGION=it", "PATH=/bin"}, nil, map[string]string{"6379/tcp": "0.0.0.0:10000"}),
			n, []svc{{"viserion:redis-0:6379", "db", "10.0.0.2", 10000, []string{"master"}, map[string]string{"region": "it"}}}, 0},
		{"the seed's consul: image name with -port for several ports",
			ctr("consul", "progrium/consul:latest", nil, nil, map[string]string{"8500/tcp": "0.0.0.0:8500", "8600/tcp": "0.0.0.0:8600"}),
			n, []svc{{"viserion:consul:8500", "consul-8500", "10.0.0.2", 8500, nil, nil}, {"viserion:consul:8600", "consul-8600", "10.0.0.2", 8600, nil, nil}}, 0},
		{"SERVICE_NAME with several ports gets -port too; SERVICE_<port>_NAME does not",
			ctr("app", "app", []string{"SERVICE_NAME=web", "SERVICE_9090_NAME=admin", "SERVICE_9090_TAGS=ops"}, nil, map[string]string{"80/tcp": ":32000", "9090/tcp": ":32001"}),
			n, []svc{{"viserion:app:80", "web-80", "10.0.0.2", 32000, nil, nil}, {"viserion:app:9090", "admin", "10.0.0.2", 32001, []string{"ops"}, nil}}, 0},
		{"unpublished ports are skipped; so is a container without any",
			ctr("quiet", "busybox", []string{"SERVICE_NAME=x"}, nil, map[string]string{"80/tcp": ""}),
			n, nil, 0},
		{"one published port of two: no -port suffix",
			ctr("half", "nginx:1.25", nil, nil, map[string]string{"80/tcp": "0.0.0.0:8080", "443/tcp": ""}),
			n, []svc{{"viserion:half:80", "nginx", "10.0.0.2", 8080, nil, nil}}, 0},
		{"udp: :udp in the ID and a udp tag",
			ctr("dns", "coredns/coredns@sha256:abc", []string{"SERVICE_TAGS=a, b,,"}, nil, map[string]string{"53/udp": "0.0.0.0:5353"}),
			n, []svc{{"viserion:dns:53:udp", "coredns", "10.0.0.2", 5353, []string{"a", "b", "udp"}, nil}}, 0},
		{"labels win over env; pier.service.* over SERVICE_* labels",
			ctr("l", "img", []string{"SERVICE_NAME=env", "SERVICE_TAGS=env", "SERVICE_TEAM=env"},
				map[string]string{"SERVICE_NAME": "label", "SERVICE_TAGS": "label", "pier.service.name": "pier", "pier.service.team": "core"},
				map[string]string{"80/tcp": "0.0.0.0:80"}),
			n, []svc{{"viserion:l:80", "pier", "10.0.0.2", 80, []string{"label"}, map[string]string{"team": "core"}}}, 0},
		{"a port-specific env key wins over a general label",
			ctr("p", "img", []string{"SERVICE_80_NAME=port"}, map[string]string{"SERVICE_NAME": "general"}, map[string]string{"80/tcp": "0.0.0.0:80"}),
			n, []svc{{"viserion:p:80", "port", "10.0.0.2", 80, nil, nil}}, 0},
		{"SERVICE_ID replaces the ID; SERVICE_IGNORE on one port",
			ctr("i", "img", []string{"SERVICE_ID=mine", "SERVICE_81_IGNORE=1"}, nil, map[string]string{"80/tcp": "0.0.0.0:80", "81/tcp": "0.0.0.0:81"}),
			n, []svc{{"mine", "img-80", "10.0.0.2", 80, nil, nil}}, 0},
		{"SERVICE_IGNORE=true skips; =false does not",
			ctr("g", "img", []string{"SERVICE_IGNORE=true"}, map[string]string{"pier.service.8080.ignore": "false"}, map[string]string{"80/tcp": "0.0.0.0:80", "8080/tcp": "0.0.0.0:8080"}),
			n, []svc{{"viserion:g:8080", "img-8080", "10.0.0.2", 8080, nil, nil}}, 0},
		{"published on one host address: that address",
			ctr("lo", "img", nil, nil, map[string]string{"80/tcp": "127.0.0.1:49000"}),
			n, []svc{{"viserion:lo:80", "img", "127.0.0.1", 49000, nil, nil}}, 0},
		{"internal: container IP and exposed port, published or not",
			ctr("in", "img", nil, nil, map[string]string{"80/tcp": "0.0.0.0:8080", "81/tcp": ""}),
			naming{Hostname: "viserion", Address: "10.0.0.2", Internal: true},
			[]svc{{"viserion:in:80", "img-80", "172.17.0.5", 80, nil, nil}, {"viserion:in:81", "img-81", "172.17.0.5", 81, nil, nil}}, 0},
		{"a bad name or meta key is reported, the rest registered",
			ctr("bad", "img", []string{"SERVICE_80_NAME=has space", "SERVICE_A.B=x"}, nil, map[string]string{"80/tcp": "0.0.0.0:80", "81/tcp": "0.0.0.0:81"}),
			n, []svc{{"viserion:bad:81", "img-81", "10.0.0.2", 81, nil, nil}}, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			regs, errs := services(tc.c, tc.n)
			if len(errs) != tc.errors {
				t.Errorf("errors %v, want %d", errs, tc.errors)
			}
			var got []svc
			for _, r := range regs {
				s := r.Service
				got = append(got, svc{s.ID, s.Name, s.Address, s.Port, s.Tags, s.Meta})
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestChecks(t *testing.T) {
	n := naming{Hostname: "h", Address: "10.0.0.2"}
	cases := []struct {
		name string
		env  []string
		want *registry.CheckDefinition // nil: no check
		st   registry.Status
		err  string
	}{
		{"none", nil, nil, "", ""},
		{"http", []string{"SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=5s", "SERVICE_CHECK_TIMEOUT=2s"},
			&registry.CheckDefinition{HTTP: "http://10.0.0.2:8080/health", Interval: registry.Duration(5 * time.Second), Timeout: registry.Duration(2 * time.Second)}, registry.StatusCritical, ""},
		{"http without slash, default interval, method", []string{"SERVICE_CHECK_HTTP=ping", "SERVICE_CHECK_HTTP_METHOD=HEAD"},
			&registry.CheckDefinition{HTTP: "http://10.0.0.2:8080/ping", Method: "HEAD", Interval: registry.Duration(10 * time.Second)}, registry.StatusCritical, ""},
		{"https", []string{"SERVICE_CHECK_HTTPS=/"},
			&registry.CheckDefinition{HTTP: "https://10.0.0.2:8080/", TLSSkipVerify: true, Interval: registry.Duration(10 * time.Second)}, registry.StatusCritical, ""},
		{"tcp with initial status", []string{"SERVICE_CHECK_TCP=true", "SERVICE_CHECK_INITIAL_STATUS=passing"},
			&registry.CheckDefinition{TCP: "10.0.0.2:8080", Interval: registry.Duration(10 * time.Second)}, registry.StatusPassing, ""},
		{"script, interpolated as Registrator does", []string{"SERVICE_CHECK_SCRIPT=nc -z $SERVICE_IP $SERVICE_PORT && echo $SERVICE_IP", "SERVICE_CHECK_INTERVAL=3s"},
			&registry.CheckDefinition{Args: []string{"/bin/sh", "-c", "nc -z 10.0.0.2 8080 && echo 10.0.0.2"}, Interval: registry.Duration(3 * time.Second)}, registry.StatusCritical, ""},
		{"ttl from a label", []string{"SERVICE_CHECK_TTL=1m"},
			&registry.CheckDefinition{TTL: registry.Duration(time.Minute)}, registry.StatusCritical, ""},
		{"deregister after", []string{"SERVICE_CHECK_TCP=1", "SERVICE_CHECK_DEREGISTER_AFTER=10m"},
			&registry.CheckDefinition{TCP: "10.0.0.2:8080", Interval: registry.Duration(10 * time.Second), DeregisterCriticalServiceAfter: registry.Duration(10 * time.Minute)}, registry.StatusCritical, ""},
		{"bad interval names the field", []string{"SERVICE_CHECK_HTTP=/", "SERVICE_CHECK_INTERVAL=often"}, nil, "", "Check.Interval"},
		{"bad status", []string{"SERVICE_CHECK_TTL=1m", "SERVICE_CHECK_INITIAL_STATUS=great"}, nil, "", "Check.Status"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ctr("c", "img", tc.env, nil, map[string]string{"8080/tcp": "0.0.0.0:8080"})
			regs, errs := services(c, n)
			if tc.err != "" {
				if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.err) || len(regs) != 0 {
					t.Fatalf("errs %v regs %d, want an error naming %s", errs, len(regs), tc.err)
				}
				return
			}
			if len(errs) != 0 || len(regs) != 1 {
				t.Fatalf("errs %v regs %d", errs, len(regs))
			}
			r := regs[0]
			if len(r.Service.Meta) != 0 {
				t.Errorf("check keys leaked into Meta: %v", r.Service.Meta)
			}
			if tc.want == nil {
				if len(r.Checks) != 0 {
					t.Errorf("checks %+v", r.Checks)
				}
				return
			}
			if len(r.Checks) != 1 {
				t.Fatalf("checks %+v", r.Checks)
			}
			ch := r.Checks[0]
			if ch.CheckID != "service:h:c:8080" || ch.Status != tc.st || !reflect.DeepEqual(ch.Definition, *tc.want) {
				b, _ := json.Marshal(ch)
				t.Errorf("check %s\nwant def %+v status %s", b, *tc.want, tc.st)
			}
		})
	}
}

func TestPortsAndNames(t *testing.T) {
	for in, want := range map[string]string{
		"redis": "redis", "redis:7": "redis", "quay.io/team/api:1.2": "api", "localhost:5000/x/y@sha256:ab": "y", "": ".",
	} {
		if got := imageName(in); got != want {
			t.Errorf("imageName(%q) = %q, want %q", in, got, want)
		}
	}
	// Host networking publishes the exposed ports as they are; of the two
	// bindings Docker makes per family, the IPv4 one is used.
	c := ctr("h", "img", nil, nil, map[string]string{"80/tcp": ":::9000"})
	c.NetworkSettings.Ports["80/tcp"] = append(c.NetworkSettings.Ports["80/tcp"], c.NetworkSettings.Ports["80/tcp"][0])
	c.NetworkSettings.Ports["80/tcp"][0].HostIP, c.NetworkSettings.Ports["80/tcp"][1].HostIP = "::", "0.0.0.0"
	c.NetworkSettings.Ports["80/tcp"][1].HostPort = "9001"
	if p := c.ports(); len(p) != 1 || p[0].HostPort != 9001 || p[0].HostIP != "0.0.0.0" {
		t.Errorf("IPv4 binding: %+v", p)
	}
	h := ctr("h", "img", nil, nil, nil)
	h.HostConfig.NetworkMode = "host"
	h.Config.ExposedPorts = map[string]struct{}{"8080/tcp": {}, "bad": {}, "70000/tcp": {}}
	if p := h.ports(); len(p) != 1 || p[0].HostPort != 8080 {
		t.Errorf("host network: %+v", p)
	}
	for s, want := range map[string]int{"15": 15, "SIGTERM": 15, "term": 15, "SIGWINCH": 28, "": 0, "nope": 0, "-1": 0} {
		if got := parseSignal(s); got != want {
			t.Errorf("parseSignal(%q) = %d, want %d", s, got, want)
		}
	}
	if !isStopSignal(28, 28) || !isStopSignal(9, 15) || isStopSignal(1, 15) || isStopSignal(0, 0) {
		t.Error("isStopSignal")
	}
}
