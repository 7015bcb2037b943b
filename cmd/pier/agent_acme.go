package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/pier-dev/pier/registry/api"
)

// kvStorage is certmagic's Storage in the servers' KV store, under
// api.ACMEKVPrefix: every front door of the cluster reads the same account
// and certificates, and a Raft session lock (?acquire) on
// locks/<name> lets one of them order a name at a time. It asks the
// agent's own API in process, so a client agent forwards to the servers
// and a follower to the leader as for any KV request, and the token's
// permission (operator:write) is checked as for any other caller. With no
// server reachable every call fails: certmagic logs it and retries, and
// what it holds in memory keeps serving.
type kvStorage struct {
	h     http.Handler
	token string
	log   *slog.Logger
	// local reads a key of the agreed KV as this agent's registry holds
	// it, which is what its DNS server answers from (WaitChallenge).
	local func(key string) ([]byte, bool)

	mu    sync.Mutex
	locks map[string]*kvLock // held by this agent, by certmagic's lock name
}

type kvLock struct {
	session string
	stop    context.CancelFunc
	done    chan struct{}
}

// kvLockTTL is the lock session's TTL: a front door that dies mid-order
// frees the name within twice this (Consul's TTL grace) plus the lock
// delay, and one that lives renews it every half.
const kvLockTTL = 30 * time.Second

// kvLockPoll bounds how long a blocked Lock waits before it asks again.
const kvLockPoll = 5 * time.Second

func newKVStorage(h http.Handler, token string, log *slog.Logger) *kvStorage {
	return &kvStorage{h: h, token: token, log: log, locks: map[string]*kvLock{}}
}

// do serves one request on the agent's API and answers its status and
// body; a 5xx (no server, no leader) is an error.
func (s *kvStorage) do(ctx context.Context, method, key string, q url.Values, body []byte) (int, []byte, http.Header, error) {
	return s.call(ctx, method, api.ACMEKVPath+key, q, body)
}

func (s *kvStorage) call(ctx context.Context, method, path string, q url.Values, body []byte) (int, []byte, http.Header, error) {
	u := &url.URL{Path: path, RawQuery: q.Encode()}
	r, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	r.RemoteAddr = "127.0.0.1:0"
	if s.token != "" {
		r.Header.Set("X-Consul-Token", s.token)
	}
	w := httptest.NewRecorder()
	s.h.ServeHTTP(w, r)
	res := w.Result()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode >= 500 || res.StatusCode == http.StatusForbidden || res.StatusCode == http.StatusUnauthorized || res.StatusCode == http.StatusBadRequest {
		return res.StatusCode, b, res.Header, fmt.Errorf("acme storage: %s %s: %d %s", method, path, res.StatusCode, strings.TrimSpace(string(b)))
	}
	return res.StatusCode, b, res.Header, nil
}

// The KV flags of a key hold its modification time (unix nanoseconds),
// which certmagic's Stat asks for.

func (s *kvStorage) Store(ctx context.Context, key string, value []byte) error {
	q := url.Values{"flags": {strconv.FormatInt(time.Now().UnixNano(), 10)}}
	_, _, _, err := s.do(ctx, http.MethodPut, key, q, value)
	return err
}

func (s *kvStorage) Load(ctx context.Context, key string) ([]byte, error) {
	code, b, _, err := s.do(ctx, http.MethodGet, key, url.Values{"raw": {""}}, nil)
	if err != nil {
		return nil, err
	}
	if code == http.StatusNotFound {
		return nil, fs.ErrNotExist
	}
	return b, nil
}

// Delete deletes key and every key under key/ (certmagic's directories).
func (s *kvStorage) Delete(ctx context.Context, key string) error {
	if _, _, _, err := s.do(ctx, http.MethodDelete, key, nil, nil); err != nil {
		return err
	}
	_, _, _, err := s.do(ctx, http.MethodDelete, strings.TrimSuffix(key, "/")+"/", url.Values{"recurse": {""}}, nil)
	return err
}

// keys lists the keys under prefix (full keys, the prefix stripped back
// to certmagic's names); sep as ?separator.
func (s *kvStorage) keys(ctx context.Context, prefix, sep string) ([]string, error) {
	q := url.Values{"keys": {""}}
	if sep != "" {
		q.Set("separator", sep)
	}
	code, b, _, err := s.do(ctx, http.MethodGet, prefix, q, nil)
	if err != nil || code == http.StatusNotFound {
		return nil, err
	}
	var ks []string
	if err := json.Unmarshal(b, &ks); err != nil {
		return nil, fmt.Errorf("acme storage: list %s: %w", prefix, err)
	}
	for i, k := range ks {
		ks[i] = strings.TrimPrefix(k, api.ACMEKVPrefix)
	}
	return ks, nil
}

func (s *kvStorage) Exists(ctx context.Context, key string) bool {
	ks, err := s.keys(ctx, key, "/")
	if err != nil {
		return false
	}
	for _, k := range ks {
		if k == key || k == strings.TrimSuffix(key, "/")+"/" {
			return true
		}
	}
	return false
}

func (s *kvStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	prefix := strings.TrimSuffix(path, "/") + "/"
	if path == "" {
		prefix = ""
	}
	sep := "/"
	if recursive {
		sep = ""
	}
	ks, err := s.keys(ctx, prefix, sep)
	if err != nil {
		return nil, err
	}
	if len(ks) == 0 {
		return nil, fs.ErrNotExist
	}
	for i, k := range ks {
		ks[i] = strings.TrimSuffix(k, "/")
	}
	return ks, nil
}

func (s *kvStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	code, b, _, err := s.do(ctx, http.MethodGet, key, nil, nil)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	if code == http.StatusNotFound {
		if ks, err := s.keys(ctx, strings.TrimSuffix(key, "/")+"/", "/"); err == nil && len(ks) > 0 {
			return certmagic.KeyInfo{Key: key}, nil // a directory
		}
		return certmagic.KeyInfo{}, fs.ErrNotExist
	}
	var pairs []struct {
		Flags uint64
		Value []byte
	}
	if err := json.Unmarshal(b, &pairs); err != nil || len(pairs) != 1 {
		return certmagic.KeyInfo{}, fmt.Errorf("acme storage: stat %s: unexpected answer", key)
	}
	return certmagic.KeyInfo{Key: key, Modified: time.Unix(0, int64(pairs[0].Flags)), Size: int64(len(pairs[0].Value)), IsTerminal: true}, nil
}

func lockKey(name string) string { return "locks/" + name }

// Lock takes a session of its own for name and acquires locks/<name> with
// it, waiting while another front door holds it. The session is renewed
// until Unlock; if this agent dies it expires and the lock is free again.
func (s *kvStorage) Lock(ctx context.Context, name string) error {
	body, _ := json.Marshal(map[string]any{"Name": "pier acme " + name, "TTL": kvLockTTL.String(), "Behavior": "delete", "LockDelay": "1s"})
	_, b, _, err := s.call(ctx, http.MethodPut, "/v1/session/create", nil, body)
	if err != nil {
		return err
	}
	var created struct{ ID string }
	if err := json.Unmarshal(b, &created); err != nil || created.ID == "" {
		return fmt.Errorf("acme storage: session create: unexpected answer %q", b)
	}
	sid := created.ID
	release := func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		s.call(dctx, http.MethodPut, "/v1/session/destroy/"+sid, nil, nil)
	}
	var index string
	for {
		_, b, _, err := s.do(ctx, http.MethodPut, lockKey(name), url.Values{"acquire": {sid}}, nil)
		if err != nil {
			release()
			return err
		}
		if string(bytes.TrimSpace(b)) == "true" {
			break
		}
		// Held elsewhere: wait for the key to change (a blocking query),
		// at most kvLockPoll.
		q := url.Values{"wait": {kvLockPoll.String()}}
		if index != "" {
			q.Set("index", index)
		}
		_, _, h, err := s.do(ctx, http.MethodGet, lockKey(name), q, nil)
		if err != nil {
			release()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		index = h.Get("X-Consul-Index")
		if ctx.Err() != nil {
			release()
			return ctx.Err()
		}
	}
	rctx, stop := context.WithCancel(context.Background())
	l := &kvLock{session: sid, stop: stop, done: make(chan struct{})}
	go s.renew(rctx, l)
	s.mu.Lock()
	s.locks[name] = l
	s.mu.Unlock()
	return nil
}

// renew keeps l's session alive until l.stop.
func (s *kvStorage) renew(ctx context.Context, l *kvLock) {
	defer close(l.done)
	t := time.NewTicker(kvLockTTL / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, _, _, err := s.call(ctx, http.MethodPut, "/v1/session/renew/"+l.session, nil, nil); err != nil && ctx.Err() == nil {
				s.log.Warn("acme storage: renewing a lock's session failed", "err", err)
			}
		}
	}
}

// Unlock releases name and destroys its session (which, with behavior
// delete, removes the lock key).
func (s *kvStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	l := s.locks[name]
	delete(s.locks, name)
	s.mu.Unlock()
	if l == nil {
		return fmt.Errorf("acme storage: unlock %s: not locked here", name)
	}
	l.stop()
	<-l.done
	ctx = context.WithoutCancel(ctx)
	_, _, _, err1 := s.do(ctx, http.MethodPut, lockKey(name), url.Values{"release": {l.session}}, nil)
	_, _, _, err2 := s.call(ctx, http.MethodPut, "/v1/session/destroy/"+l.session, nil, nil)
	return errors.Join(err1, err2)
}

// kvChallengePoll is how often WaitChallenge looks at the registry: the
// wait is a few milliseconds at most, except just after a server starts.
const kvChallengePoll = 10 * time.Millisecond

// kvChallengeWait bounds WaitChallenge: an agent whose copy of the agreed
// state is stuck fails the order (certmagic retries it later) rather than
// hold its lock.
const kvChallengeWait = 30 * time.Second

// WaitChallenge is proxy.ChallengeWaiter: it returns once this agent's
// registry, which its DNS server answers from, holds key with value.
func (s *kvStorage) WaitChallenge(ctx context.Context, key string, value []byte) error {
	if s.local == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, kvChallengeWait)
	defer cancel()
	t := time.NewTicker(kvChallengePoll)
	defer t.Stop()
	for {
		if v, ok := s.local(api.ACMEKVPrefix + key); ok && bytes.Equal(v, value) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("acme storage: the DNS-01 record %s is not answered here yet: %w", key, ctx.Err())
		case <-t.C:
		}
	}
}

func (s *kvStorage) String() string { return "pier KV " + api.ACMEKVPrefix }
