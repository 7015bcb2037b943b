package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/raft"
)

// Consensus is what the API needs of the servers that agree through Raft
// (KV, sessions, txn, status, operator raft, snapshots). The agent's wiring
// implements it; nil keeps the gossip KV and answers 404 for the rest.
type Consensus interface {
	// Node is this agent's Raft node when it is a server; nil on a client.
	Node() *raft.Node
	// Servers are the server-port addresses (host:port) of the servers
	// gossip knows alive; a client forwards to one of them.
	Servers() []string
}

// How a request reaches the Raft state. A write, a default read and a
// ?consistent read are the leader's: a server that leads answers them
// itself, any other agent forwards the HTTP request as it came, to the
// leader's server port from a server, to any server from a client (which
// forwards it on). A ?stale read is any server's: a server answers from its
// own state, a client forwards to any server. A forward keeps the method,
// path, query, body and headers (the token with them: ACLs are checked
// where the request is served, again) and streams the answer back.

type readMode int

const (
	modeDefault    readMode = iota // the leader's state after its barrier
	modeStale                      // any server's own state
	modeConsistent                 // the leader's state once a quorum confirms it still leads
)

// hopHeader counts the times a request was forwarded. A client forwards
// only a request that reached it first (one forwarded to a client is a
// misconfiguration); servers forward while the count is below maxHops, so
// a request from a client survives one stale view of the leader (client
// to a server, which sends it to the server it thought led, which sends
// it on to the new leader) and two servers that each name the other
// leader while an election settles cannot bounce it for ever.
const (
	hopHeader = "X-Pier-Forwarded"
	maxHops   = 3
)

// originHeader names the agent a request first reached, whose node is a
// new session's default (Consul fills it in on that agent).
const originHeader = "X-Pier-Origin-Node"

// sourceHeader carries the address of the client a request first came
// from (Consul's QuerySource.Ip, which near=_ip looks up among the nodes).
const sourceHeader = "X-Pier-Source-Addr"

// sourceAddr answers the client a request first came from: as an agent
// forwarded it, else the first X-Forwarded-For, else the peer, as
// Consul's; "" when none parses.
func sourceAddr(r *http.Request) string {
	if a := r.Header.Get(sourceHeader); a != "" {
		return a
	}
	first, _, _ := strings.Cut(r.Header.Get("X-Forwarded-For"), ",")
	if ip, err := netip.ParseAddr(strings.TrimSpace(first)); err == nil {
		return ip.Unmap().String()
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap().String()
	}
	return ""
}

// origin answers the node a request first reached.
func (s *Server) origin(r *http.Request) string {
	if o := r.Header.Get(originHeader); o != "" {
		return o
	}
	return s.self()
}

// readModeOf reads ?stale and ?consistent; false means a 400 was sent.
func readModeOf(w http.ResponseWriter, r *http.Request) (readMode, bool) {
	v := r.URL.Query()
	stale, consistent := v.Has("stale"), v.Has("consistent")
	switch {
	case stale && consistent:
		httpError(w, http.StatusBadRequest, "Cannot specify ?stale with ?consistent, conflicting semantics.")
		return 0, false
	case stale:
		return modeStale, true
	case consistent:
		return modeConsistent, true
	}
	return modeDefault, true
}

// raftRead answers the state a read is served from, with Consul's
// X-Consul-KnownLeader and X-Consul-LastContact set; false means the
// request was forwarded or answered with an error.
func (s *Server) raftRead(w http.ResponseWriter, r *http.Request) (*raft.State, *raft.Node, bool) {
	mode, ok := readModeOf(w, r)
	if !ok {
		return nil, nil, false
	}
	n := s.cfg.Consensus.Node()
	if n == nil {
		s.forwardToServer(w, r)
		return nil, nil, false
	}
	if mode == modeStale {
		s.raftMeta(w, r, n)
		return n.State(), n, true
	}
	if !s.toLeader(w, r, n) {
		return nil, nil, false
	}
	st := n.State()
	if mode == modeConsistent {
		var err error
		if st, err = n.ConsistentState(); err != nil {
			raftError(w, err)
			return nil, nil, false
		}
	}
	s.raftMeta(w, r, n)
	return st, n, true
}

// localWrite is raftWrite for an endpoint that only this datacenter
// answers (a ?dc= naming another one is refused as Consul's "No path").
func (s *Server) localWrite(w http.ResponseWriter, r *http.Request) (*raft.Node, bool) {
	if !s.localDC(w, r) {
		return nil, false
	}
	return s.raftWrite(w, r)
}

// localWriteBody is localWrite that also reads the request's body.
func (s *Server) localWriteBody(w http.ResponseWriter, r *http.Request) (*raft.Node, []byte, bool) {
	n, ok := s.localWrite(w, r)
	if !ok {
		return nil, nil, false
	}
	b, ok := s.readBody(w, r)
	return n, b, ok
}

// raftWrite answers this server's node when it leads; false means the
// request was forwarded or answered with an error.
func (s *Server) raftWrite(w http.ResponseWriter, r *http.Request) (*raft.Node, bool) {
	n := s.cfg.Consensus.Node()
	if n == nil {
		s.forwardToServer(w, r)
		return nil, false
	}
	if !s.toLeader(w, r, n) {
		return nil, false
	}
	return n, true
}

// toLeader answers true when n leads and may serve r; otherwise it forwards
// r to the leader, or answers 500 No cluster leader once RPCHoldTimeout
// passes without one (Consul's rpc_hold_timeout: a request made during an
// election waits for its end instead of failing). A leader that cannot be
// dialled (it has just died, and this server does not know yet) is tried
// again until then too.
func (s *Server) toLeader(w http.ResponseWriter, r *http.Request, n *raft.Node) bool {
	deadline := time.Now().Add(s.cfg.RPCHoldTimeout)
	var rewind func()
	tried := false
	for {
		if n.IsLeader() {
			if rewind != nil {
				rewind() // the body is whole again for this server's handler
			}
			return true
		}
		// No leader known, this server elected but not past its barrier,
		// or a leader that could not be reached: wait, then look again.
		if addr, _ := n.Leader(); addr != "" && addr != n.Addr() {
			if !tried {
				rewind, tried = s.rewindable(r), true
			}
			if s.forward(w, r, addr, rewind, rewind != nil && time.Now().Before(deadline)) {
				return false
			}
		}
		if !time.Now().Before(deadline) {
			raftError(w, raft.ErrNoLeader)
			return false
		}
		select {
		case <-r.Context().Done():
			raftError(w, raft.ErrNoLeader)
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// forwardToServer sends a client's request to a server: a random one of
// those alive, so that clients spread over them, the next one if it cannot
// be dialled. The server decides again by the request's own ?stale or
// ?consistent.
func (s *Server) forwardToServer(w http.ResponseWriter, r *http.Request) {
	if hops := r.Header.Get(hopHeader); hops != "" {
		httpError(w, http.StatusInternalServerError, "Request forwarding loop: a forwarded request (%s times) reached client agent %s", hops, s.self())
		return
	}
	servers := s.cfg.Consensus.Servers()
	if len(servers) == 0 {
		httpError(w, http.StatusInternalServerError, "No known Consul servers")
		return
	}
	rewind := s.rewindable(r)
	for i, j := range rand.Perm(len(servers)) {
		if s.forward(w, r, servers[j], rewind, rewind != nil && i < len(servers)-1) {
			return
		}
	}
}

// rewindable makes r's body readable again for another try: nil when it
// cannot be (a body of unknown length, or larger than MaxBodySize, such as
// a snapshot, which is sent once).
func (s *Server) rewindable(r *http.Request) func() {
	if r.ContentLength == 0 {
		return func() { r.Body = http.NoBody }
	}
	if r.ContentLength < 0 || r.ContentLength > s.cfg.MaxBodySize {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, r.ContentLength))
	if err != nil || int64(len(b)) != r.ContentLength {
		return nil
	}
	return func() { r.Body = io.NopCloser(bytes.NewReader(b)) }
}

// forward proxies r to the server port at addr and streams its answer
// back, headers included; true means an answer was written. With retry,
// an addr that cannot be dialled leaves nothing written and answers false
// (rewind first makes the body whole again for the next try).
func (s *Server) forward(w http.ResponseWriter, r *http.Request, addr string, rewind func(), retry bool) bool {
	return s.forwardVia(w, r, addr, rewind, retry, forwarding{transport: s.fwd, within: s.answerWithin(r)})
}

// forwarding is how a forward goes: over which transport, and how long its
// answer may take to begin.
type forwarding struct {
	transport http.RoundTripper
	within    time.Duration
	// wan: to another datacenter, where the hops count anew (a request
	// may have made two in this one, to its leader) and an ACL write's
	// index is of another Raft state.
	wan bool
}

// forwardVia is forward over via.
func (s *Server) forwardVia(w http.ResponseWriter, r *http.Request, addr string, rewind func(), retry bool, via forwarding) bool {
	hops, _ := strconv.Atoi(r.Header.Get(hopHeader))
	if hops >= maxHops && !via.wan {
		httpError(w, http.StatusInternalServerError, "Request forwarding loop: forwarded %d times, last to %s", hops, addr)
		return true
	}
	if rewind != nil {
		rewind()
	}
	// The answer's own Consul headers replace the defaults serve set.
	h := w.Header()
	for _, k := range []string{"X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-LastContact"} {
		h.Del(k)
	}
	answered := true
	// A server that stops answering without closing the connection (a
	// paused process, or one cut off by a partition that drops packets)
	// would hold the request for ever: its answer must begin within
	// answerWithin, or the request fails with a 500 that the caller can
	// retry (through a server that knows the new leader by then).
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	var silent atomic.Bool
	timer := time.AfterFunc(via.within, func() { silent.Store(true); cancel() })
	defer timer.Stop()
	// Every request goes over the pool of kept-alive connections: a new
	// connection per forwarded write cost the forwarding server a fifth of
	// its CPU under load (deploy/bench/README.md). A write is still never
	// sent twice: net/http sends a request again on a new connection only
	// when nothing of it was written, or when it is replayable (a GET or
	// HEAD, or one marked idempotent with an Idempotency-Key header, which
	// is why a write leaves without those). A request that did not reach
	// the server whole (it could not be dialled, or a kept-alive connection
	// it had closed failed the write: a leader that just stopped) cannot
	// have been served, and the loop above tries again; one that failed
	// while its answer was awaited may have been, and is a 500.
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = addr
			pr.Out.Host = addr
			pr.Out.Header.Set(hopHeader, strconv.Itoa(hops+1))
			if via.wan {
				pr.Out.Header.Set(hopHeader, "1")
			}
			pr.Out.Header.Set(originHeader, s.origin(r))
			if a := sourceAddr(r); a != "" {
				pr.Out.Header.Set(sourceHeader, a)
			}
			if hops == 0 && acl.RequestToken(r) == "" {
				// As Consul's agents: a request without a token acts as
				// this agent's default token, here and where it is sent.
				if t := s.acl.AgentSecret("default"); t != "" {
					pr.Out.Header.Set("X-Consul-Token", t)
				}
			}
			if !isRead(r) {
				pr.Out.Header.Del("Idempotency-Key")
				pr.Out.Header.Del("X-Idempotency-Key")
			}
		},
		Transport: via.transport,
		ModifyResponse: func(resp *http.Response) error {
			if !timer.Stop() {
				return errSilentServer // the timer fired as the answer came: it is cancelled
			}
			if via.wan {
				// Another datacenter's index: the primary's, for a
				// secondary's replication to wait for (registry/acl).
				if idx := resp.Header.Get(agreedIndexHeader); idx != "" {
					resp.Header.Del(agreedIndexHeader)
					resp.Header.Set(acl.RemoteIndexHeader, idx)
				}
				return nil
			}
			return s.awaitAgreed(resp) // an ACL write's answer waits for this agent's mirror (acl_raft.go)
		},
		// An answer of unknown length (a large blocking answer, a
		// snapshot) is flushed as it comes, whatever FlushInterval says;
		// one of known length leaves in one write, not its headers first
		// and then its body.
		FlushInterval: 0,
		BufferPool:    &s.fwdBufs, // not 32 KiB of garbage per forward
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			if silent.Load() || errors.Is(err, errSilentServer) {
				s.log.Warn("api: a server did not answer a forwarded request", "server", addr, "path", r.URL.Path, "within", via.within)
				httpError(w, http.StatusInternalServerError, "rpc error: server %s did not answer within %v", addr, via.within)
				return
			}
			if errors.Is(err, context.Canceled) {
				return // the client went away
			}
			if retry && unsent(err) {
				s.log.Debug("api: a server could not be reached", "server", addr, "err", err)
				answered = false
				return
			}
			s.log.Warn("api: forwarding a request to a server", "server", addr, "path", r.URL.Path, "err", err)
			httpError(w, http.StatusInternalServerError, "rpc error: forwarding to server %s: %v", addr, err)
		},
	}
	p.ServeHTTP(w, r.WithContext(ctx))
	return answered
}

// copyBuffers lends the forwarding proxy its copy buffers.
type copyBuffers struct{ pool sync.Pool }

func (c *copyBuffers) Get() []byte {
	if b, ok := c.pool.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 32<<10)
}

func (c *copyBuffers) Put(b []byte) { c.pool.Put(&b) }

// unsent reports whether a forward's error left the request short of the
// server: a dial, or a write of the request, failed. A server reads a
// request whole before it serves it, and a write that fails wrote nothing,
// so the request was not complete there. A read error (the request was
// sent; its answer was lost) is not.
func unsent(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if op, ok := e.(*net.OpError); ok {
			switch op.Op {
			case "dial", "write", "readfrom": // readfrom: the body's copy
				return true
			case "read":
				return false
			}
		}
	}
	return false
}

// errSilentServer: a forwarded request's answer began too late.
var errSilentServer = errors.New("api: the server did not answer in time")

// answerWithin is how long a forwarded request may wait for the start of
// its answer: a leader answers a write or a read within its apply timeout
// (10 s) and a server without a leader within RPCHoldTimeout, so three
// RPCHoldTimeouts (21 s by default) leave room for a forward on from a
// server with a stale view of the leader; a blocking query also has its
// wait and its jitter (1/16). A snapshot's upload and restore take as
// long as its size needs: it has no bound.
func (s *Server) answerWithin(r *http.Request) time.Duration {
	if r.URL.Path == "/v1/snapshot" {
		return 1<<63 - 1
	}
	return 3*s.cfg.RPCHoldTimeout + s.blockingWait(r)
}

// blockingWait is how long r may be held as a blocking query (its wait
// and the jitter), 0 for any other request.
func (s *Server) blockingWait(r *http.Request) time.Duration {
	q := r.URL.Query()
	if q.Get("index") == "" || q.Get("index") == "0" {
		return 0
	}
	wait := s.cfg.DefaultWait
	if w, err := time.ParseDuration(q.Get("wait")); err == nil && w >= 0 {
		wait = min(w, s.cfg.MaxWait)
	}
	return wait + wait/16
}

// newForwarder is the transport of forwarded requests: no overall timeout,
// since a blocking query is held open for up to MaxWait. dial, when set,
// is the server port's (its TLS); the connections it makes are pooled as
// plain ones are.
func newForwarder(dial func(ctx context.Context, network, addr string) (net.Conn, error), dialWithin time.Duration) *http.Transport {
	if dial == nil {
		dial = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, dialWithin)
			defer cancel()
			return dial(ctx, network, addr)
		},
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// raftMeta sets Consul's leader headers from n, honestly, and the
// consistency r was served with.
func (s *Server) raftMeta(w http.ResponseWriter, r *http.Request, n *raft.Node) {
	addr, _ := n.Leader()
	h := w.Header()
	h.Set("X-Consul-KnownLeader", strconv.FormatBool(addr != ""))
	consistency := "leader"
	if q := r.URL.Query(); q.Has("stale") {
		consistency = "stale"
	} else if q.Has("consistent") {
		consistency = "consistent"
	}
	h.Set("X-Consul-Effective-Consistency", consistency)
	d, _ := n.LastContactKnown()
	h.Set("X-Consul-LastContact", strconv.FormatInt(d.Milliseconds(), 10))
}

// applied reports whether a command reached the log and applied without
// an error of its own; if not, it has answered with the reason (raftError
// for the node's, a 500 for the state machine's).
func applied(w http.ResponseWriter, res raft.Result, err error) bool {
	switch {
	case err != nil:
		raftError(w, err)
	case res.Err != nil:
		httpError(w, http.StatusInternalServerError, "%v", res.Err)
	default:
		return true
	}
	return false
}

// raftError answers an error of the Raft node as Consul does.
func raftError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, raft.ErrNoLeader):
		httpError(w, http.StatusInternalServerError, "No cluster leader")
	case errors.Is(err, raft.ErrNotLeader):
		// It led when the request arrived; nothing was applied.
		httpError(w, http.StatusInternalServerError, "Leadership moved while the request was served; nothing was applied, retry")
	default:
		httpError(w, http.StatusInternalServerError, "%v", err)
	}
}

// errBadRequest marks an error of the request itself (a 400).
type errBadRequest struct{ msg string }

func (e errBadRequest) Error() string { return e.msg }

func badRequest(format string, args ...any) error { return errBadRequest{fmt.Sprintf(format, args...)} }
