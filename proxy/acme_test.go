package proxy

import (
	"context"
	"crypto/tls"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pier-dev/pier/deploy/eventually"
)

// TestACMECADownFromTheStart: with the CA unreachable and no certificate
// yet, the front door runs: a file certificate still serves its names and
// is the default, the managed name's failures are counted, an unknown
// challenge token goes on to the routes, and everything stops cleanly.
func TestACMECADownFromTheStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	dead := deadPort(t)
	e := newTLSEnv(t, func(tc *TLSConfig) {
		tc.ACME = &ACMEConfig{CA: "https://" + dead + "/dir", Names: []string{"managed.test"},
			Storage: newMemStorage()}
	}, func(c *Config) { c.Registerer = reg })
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- e.p.RunACME(ctx, listen(t).Addr(), listen(t).Addr()) }()
	defer func() { cancel(); <-done }()
	eventually.True(t, 20*time.Second, "the CA's failure counted", func() bool {
		return testutil.ToFloat64(e.p.acme.errors) > 0
	})
	got, err := e.handshake("managed.test", nil)
	if err != nil || !got.Equal(e.a) {
		t.Errorf("managed name without its certificate: %v, %v; want the default certificate", got, err)
	}
	if got, err := e.handshake("b.test", nil); err != nil || !got.Equal(e.b) {
		t.Errorf("a file's name: %v, %v", got, err)
	}
	// The TLS-ALPN-01 protocol with no challenge pending: refused.
	if _, err := e.handshake("managed.test", &tls.Config{NextProtos: []string{acmeALPN}}); err == nil {
		t.Error("an acme-tls/1 handshake with no challenge pending succeeded")
	}
	if code, body := e.get("a.test", "/.well-known/acme-challenge/nothing"); code != 200 || !strings.Contains(body, "acme-challenge") {
		t.Errorf("an unknown challenge token: %d %s; want it proxied", code, body)
	}
}

// TestACMEConfigErrors: New refuses a bad proxy.tls.acme, naming the field.
func TestACMEConfigErrors(t *testing.T) {
	bal := newEnv(t, nil).bal
	for _, tc := range []struct {
		acme ACMEConfig
		want string
	}{
		{ACMEConfig{Names: []string{"a.example.com"}}, "no storage"},
		{ACMEConfig{Names: []string{"bad_name.example.com"}, Storage: newMemStorage()}, `names[0] "bad_name.example.com"`},
	} {
		pc := DefaultConfig()
		pc.Balancer = bal
		pc.TLS = &TLSConfig{ACME: &tc.acme}
		if _, err := New(pc); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.acme, err, tc.want)
		}
	}
}

// memStorage is a certmagic.Storage in memory, for one process: its lock
// is a mutex per name (certmagic's FileStorage leaves a goroutine behind
// each lock for seconds).
type memStorage struct {
	mu    sync.Mutex
	kv    map[string][]byte
	locks map[string]chan struct{}
}

func newMemStorage() *memStorage {
	return &memStorage{kv: map[string][]byte{}, locks: map[string]chan struct{}{}}
}

func (s *memStorage) Lock(ctx context.Context, name string) error {
	for {
		s.mu.Lock()
		ch, held := s.locks[name]
		if !held {
			s.locks[name] = make(chan struct{})
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *memStorage) Unlock(_ context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.locks[name])
	delete(s.locks, name)
	return nil
}

func (s *memStorage) Store(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kv[key] = slices.Clone(value)
	return nil
}

func (s *memStorage) Load(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.kv[key]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return slices.Clone(v), nil
}

func (s *memStorage) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.kv {
		if k == key || strings.HasPrefix(k, key+"/") {
			delete(s.kv, k)
		}
	}
	return nil
}

func (s *memStorage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

func (s *memStorage) List(_ context.Context, path string, recursive bool) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for k := range s.kv {
		rest, ok := strings.CutPrefix(k, path+"/")
		if !ok {
			continue
		}
		if i := strings.IndexByte(rest, '/'); i >= 0 && !recursive {
			rest = rest[:i]
		}
		if n := path + "/" + rest; !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fs.ErrNotExist
	}
	return out, nil
}

func (s *memStorage) Stat(_ context.Context, key string) (certmagic.KeyInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.kv[key]; ok {
		return certmagic.KeyInfo{Key: key, Size: int64(len(v)), IsTerminal: true}, nil
	}
	for k := range s.kv {
		if strings.HasPrefix(k, key+"/") {
			return certmagic.KeyInfo{Key: key}, nil
		}
	}
	return certmagic.KeyInfo{}, fs.ErrNotExist
}

// TestACMERouteNamesBound: only the config's names and the hosts of
// routes with tls=acme are managed, and with allow only the hosts it
// matches; a wildcard covers one label with dns-01; RunACME is woken once
// per change of the set, not at every rebuild.
func TestACMERouteNamesBound(t *testing.T) {
	m, err := newACMEManager(&ACMEConfig{Names: []string{"static.test", "*.wild.test"}, Challenges: []string{"dns-01"},
		Allow: []string{"*.shop.test", "exact.test"}, Storage: newMemStorage()}, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	kicked := func() bool {
		select {
		case <-m.kick:
			return true
		default:
			return false
		}
	}
	m.setRouteNames([]string{"a.shop.test", "exact.test", "evil.test", "shop.test", "bad_name.shop.test"})
	if !kicked() {
		t.Error("no wake-up for new names")
	}
	for name, want := range map[string]bool{
		"static.test": true, "a.wild.test": true, "a.b.wild.test": false, "wild.test": false,
		"a.shop.test": true, "exact.test": true, "evil.test": false, "shop.test": false, "bad_name.shop.test": false,
		"random.test": false,
	} {
		if got := m.managed(name); got != want {
			t.Errorf("managed(%q) = %v, want %v", name, got, want)
		}
	}
	m.setRouteNames([]string{"exact.test", "a.shop.test", "evil.test"}) // the same set
	if kicked() {
		t.Error("a wake-up with no change")
	}
	if n := testutil.ToFloat64(m.count); n != 4 {
		t.Errorf("pier_proxy_acme_names = %v, want 4", n)
	}
	m.setRouteNames(nil)
	if n := testutil.ToFloat64(m.count); n != 2 {
		t.Errorf("pier_proxy_acme_names = %v after the routes went, want 2", n)
	}
	if !kicked() || m.managed("a.shop.test") || !m.managed("static.test") {
		t.Errorf("after the routes went: a.shop.test %v, static.test %v", m.managed("a.shop.test"), m.managed("static.test"))
	}
}
