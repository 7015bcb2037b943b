package dns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sync/errgroup"
)

// Server answers DNS for one agent. It is safe for concurrent use; its
// configuration is frozen after New.
type Server struct {
	cfg    Config
	log    *slog.Logger
	domain []byte // Domain in lowercase wire form
	view   atomic.Pointer[view]
	cache  *cache

	inflight chan struct{} // one token per UDP query being forwarded
	slow     sync.WaitGroup
	flightMu sync.Mutex
	flights  map[string]*flight // questions being forwarded, by key

	ready    chan struct{}
	mu       sync.Mutex
	addrs    []net.Addr
	udps     []*udpSock
	tcps     []net.Listener
	listened bool
	running  bool
	ctx      context.Context // Run's, for forwarding from the TCP handler
	met      *dnsMetrics     // nil: no metrics
}

// New validates cfg and builds a Server. It opens no socket: Run does.
func New(cfg Config) (*Server, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		cache:    newCache(cfg.CacheSize),
		inflight: make(chan struct{}, cfg.MaxInflight),
		flights:  map[string]*flight{},
		ready:    make(chan struct{}),
		ctx:      context.Background(),
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var err error
	if s.met, err = newMetrics(cfg.Registerer, s); err != nil {
		return nil, fmt.Errorf("dns: metrics: %w", err)
	}
	buf := make([]byte, 256)
	n, err := mdns.PackDomainName(cfg.Domain, buf, 0, nil, false)
	if err != nil {
		return nil, fmt.Errorf("dns: domain %q: %w", cfg.Domain, err)
	}
	s.domain = buf[:n]
	if len(cfg.Recursors) == 0 {
		s.log.Info("no recursors: names outside the domain are refused", "domain", cfg.Domain)
	}
	return s, nil
}

// Ready is closed once every socket is open; Addrs then tells where.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the bound addresses (UDP and TCP share each one) once Ready
// is closed.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]net.Addr(nil), s.addrs...)
}

// Recursors returns the upstream servers in the order they are tried.
func (s *Server) Recursors() []string { return append([]string(nil), s.cfg.Recursors...) }

// Listen opens a UDP and a TCP socket on every address, so that a port
// in use is reported before anything runs. Ready is closed once they are
// open. Run calls it if the caller did not; Run closes the sockets.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listened {
		return errors.New("dns: Listen called twice")
	}
	for _, a := range s.cfg.Addrs {
		us, t, err := listen(a, udpSockets(max(2, runtime.GOMAXPROCS(0))))
		if err != nil {
			for _, c := range s.udps {
				c.Close()
			}
			for _, l := range s.tcps {
				l.Close()
			}
			s.udps, s.tcps = nil, nil
			return fmt.Errorf("dns: %w", err)
		}
		s.udps, s.tcps = append(s.udps, us...), append(s.tcps, t)
		s.addrs = append(s.addrs, us[0].LocalAddr())
	}
	s.listened = true
	close(s.ready)
	return nil
}

// Run serves UDP and TCP on every address until ctx ends, opening the
// sockets first unless Listen did. It returns an error if a socket cannot
// be opened or fails. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	listened, running := s.listened, s.running
	s.running = true
	s.ctx = ctx
	s.mu.Unlock()
	if running {
		return errors.New("dns: Run called twice")
	}
	if !listened {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	udps, tcps := s.udps, s.tcps

	g, gctx := errgroup.WithContext(ctx)
	// One reader per socket, or two sharing it where there is just one.
	readers := max(1, 2/max(1, len(udps)/max(1, len(s.cfg.Addrs))))
	for _, u := range udps {
		for range readers {
			g.Go(func() error { return s.readUDP(gctx, u) })
		}
	}
	for _, l := range tcps {
		g.Go(func() error { return s.serveTCP(gctx, l) })
	}
	g.Go(func() error {
		<-gctx.Done()
		for _, u := range udps {
			u.wake()
		}
		return nil
	})
	err := g.Wait()
	// Forwarded queries still answer on the sockets: close them last.
	s.slow.Wait()
	for _, u := range udps {
		u.Close()
	}
	return err
}

// listen opens a TCP socket on addr and n UDP sockets on the same address
// and port; with port 0 they all get the same free port. TCP goes first and
// alone, so that a port in use is refused even though the UDP sockets share
// theirs (SO_REUSEPORT). The UDP sockets bind the address the TCP socket
// got, so a host name resolves once.
func listen(addr string, n int) ([]*udpSock, net.Listener, error) {
	_, port, _ := net.SplitHostPort(addr)
	for try := 0; ; try++ {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		ta := l.Addr().(*net.TCPAddr)
		var us []*udpSock
		for range n {
			u, err2 := listenUDP(ta.IP, ta.Port)
			if err = err2; err != nil {
				break
			}
			us = append(us, u)
		}
		if err == nil {
			return us, l, nil
		}
		l.Close()
		for _, u := range us {
			u.Close()
		}
		if port != "0" || try == 20 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, err
		}
	}
}

// UDP read batching: each reader takes up to udpBatchLen queries per system
// call (recvmmsg on Linux) and sends the replies in one (sendmmsg). Queries
// larger than maxQuery are cut short and answered FORMERR; real ones are
// far smaller (miekg/dns reads 512 bytes).
const (
	udpBatchLen = 32
	maxQuery    = 4096
)

// errWoken: a receive ended without a query (a timeout, a signal, or
// wake); the reader checks whether it should stop.
var errWoken = errors.New("woken")

// readUDP answers queries on one UDP socket until the server stops. Several
// run per socket. A query that must be forwarded gets a goroutine of its own.
func (s *Server) readUDP(ctx context.Context, u *udpSock) error {
	b := newUDPBatch(u)
	var keybuf [keyCap]byte
	var namebuf [256]byte
	for {
		n, err := b.read()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if err != errWoken {
				s.log.Debug("udp read", "err", err)
			}
			continue
		}
		for i := range n {
			pkt, src := b.query(i)
			if !src.IsValid() {
				continue
			}
			b.reply(i, s.handleUDP(ctx, u, pkt, src, b.buf(), &keybuf, &namebuf))
		}
		b.flush(s.log)
	}
}

// handleUDP answers one UDP query into out, or returns nil when there is
// nothing to send now (no reply is due, or the query is being forwarded).
func (s *Server) handleUDP(ctx context.Context, u *udpSock, pkt []byte, src netip.AddrPort, out []byte, keybuf *[keyCap]byte, namebuf *[256]byte) []byte {
	var start time.Time
	if s.met != nil {
		start = time.Now()
	}
	var q query
	if !parseQuery(pkt, keybuf, s.domain, &q) {
		var ok bool
		if q, ok = s.parseSlow(pkt, keybuf, namebuf); !ok {
			return nil
		}
	}
	// The source of a UDP query is unverified (it may be spoofed, to aim
	// the reply at someone else): no reply is larger than pier's own EDNS
	// payload size, whatever size the query advertises (RFC 6891 6.2.5).
	q.size = min(q.size, s.cfg.MaxUDPSize)
	resp, done := s.reply(out, &q, src.Addr().Unmap(), false)
	if !done {
		s.forwardUDP(ctx, u, q, src, start)
		return nil
	}
	s.met.done(&q, resp, start)
	return resp
}

// forwardUDP forwards q in a goroutine of its own, or answers SERVFAIL when
// too many are in flight.
func (s *Server) forwardUDP(ctx context.Context, u *udpSock, q query, src netip.AddrPort, start time.Time) {
	select {
	case s.inflight <- struct{}{}:
	default:
		resp := errReply(nil, &q, mdns.RcodeServerFailure, true, s.cfg.MaxUDPSize)
		u.writeTo(resp, src)
		s.met.done(&q, resp, start)
		return
	}
	q = q.clone()
	s.slow.Add(1)
	go func() {
		defer func() {
			<-s.inflight
			s.slow.Done()
		}()
		resp := s.forward(ctx, nil, &q, src.Addr().Unmap(), false)
		// Counted before it is sent, as the fast path's replies are: a
		// client that has its answer sees it in the metrics.
		s.met.done(&q, resp, start)
		if err := u.writeTo(resp, src); err != nil {
			s.log.Debug("udp write", "to", src, "err", err)
		}
	}()
}

// parseSlow parses a packet that the fast path did not take. A malformed
// query gets FORMERR with its header only; a response gets nothing.
func (s *Server) parseSlow(pkt []byte, keybuf *[keyCap]byte, namebuf *[256]byte) (query, bool) {
	var req mdns.Msg
	if err := req.Unpack(pkt); err != nil {
		if len(pkt) < hdrLen || pkt[2]&0x80 != 0 {
			return query{}, false // not a query: answering could feed a loop
		}
		q := query{id: uint16(pkt[0])<<8 | uint16(pkt[1]), opcode: int(pkt[2]>>3) & 0xf, flags: uint16(pkt[2]) << 8}
		q.domOff = -2 // FORMERR
		return q, true
	}
	if req.Response {
		return query{}, false
	}
	return s.fromMsg(&req, keybuf, namebuf), true
}

// Pseudo values of query.domOff for queries answered with an error.
const (
	domFormErr = -2
	domNotImp  = -3
	domBadVers = -4
	domRefused = -5
)

// fromMsg turns a parsed query into a query, marking the ones that get an
// error rcode.
func (s *Server) fromMsg(req *mdns.Msg, keybuf *[keyCap]byte, namebuf *[256]byte) query {
	q := query{id: req.Id, opcode: req.Opcode, size: 512, domOff: -1}
	if req.RecursionDesired {
		q.flags |= flagRD
	}
	if req.CheckingDisabled {
		q.flags |= flagCD
	}
	if opt := req.IsEdns0(); opt != nil {
		q.edns, q.size = true, max(512, int(opt.UDPSize()))
		if opt.Version() != 0 {
			q.domOff = domBadVers
		}
	}
	if len(req.Question) == 1 {
		qq := req.Question[0]
		n, err := mdns.PackDomainName(qq.Name, namebuf[:], 0, nil, false)
		if err == nil {
			q.name, q.qtype, q.qclass = namebuf[:n], qq.Qtype, qq.Qclass
			q.key = keyFromName(keybuf, q.name, q.qtype)
		}
	}
	switch {
	case q.domOff != -1:
	case req.Opcode != mdns.OpcodeQuery:
		q.domOff = domNotImp
	case q.name == nil || len(req.Question) != 1:
		q.domOff = domFormErr
	case q.qtype == mdns.TypeOPT || q.qtype == mdns.TypeTSIG || q.qtype == mdns.TypeTKEY || q.qtype == mdns.TypeNone:
		q.domOff = domFormErr
	case q.qtype == mdns.TypeAXFR || q.qtype == mdns.TypeIXFR || q.qtype == mdns.TypeMAILA || q.qtype == mdns.TypeMAILB:
		q.domOff = domNotImp
	case q.qclass != mdns.ClassINET && q.qclass != mdns.ClassANY:
		q.domOff = domRefused
	default:
		q.domOff = underDomain(q.key[:len(q.key)-2], s.domain)
	}
	return q
}

// mayRecurse reports whether src may have names outside the domain
// resolved: loopback always, others only when AllowRecursion covers them.
func (s *Server) mayRecurse(src netip.Addr) bool {
	if len(s.cfg.Recursors) == 0 {
		return false
	}
	if src.IsLoopback() {
		return true
	}
	for _, p := range s.cfg.AllowRecursion {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// reply answers q from the catalog or the forwarding cache into out. It
// returns false when q must be forwarded, which may block.
func (s *Server) reply(out []byte, q *query, src netip.Addr, tcp bool) ([]byte, bool) {
	ra := s.mayRecurse(src)
	switch q.domOff {
	case domFormErr:
		return errReply(out, q, mdns.RcodeFormatError, ra, s.cfg.MaxUDPSize), true
	case domNotImp:
		return errReply(out, q, mdns.RcodeNotImplemented, ra, s.cfg.MaxUDPSize), true
	case domBadVers:
		q.name = nil // RFC 6891: BADVERS carries no question
		return errReply(out, q, mdns.RcodeBadVers, ra, s.cfg.MaxUDPSize), true
	case domRefused:
		return errReply(out, q, mdns.RcodeRefused, ra, s.cfg.MaxUDPSize), true
	case -1:
		if a := s.acmeAnswer(q); a != nil {
			q.kind = kindOther
			return render(out, a.wire(s, slotFor(tcp, q)), q, ra), true
		}
		if !ra {
			return errReply(out, q, mdns.RcodeRefused, false, s.cfg.MaxUDPSize), true
		}
		if q.qclass != mdns.ClassINET {
			return errReply(out, q, mdns.RcodeRefused, ra, s.cfg.MaxUDPSize), true
		}
		now := s.cfg.Now()
		if e := s.cache.get(q.key, now); e != nil {
			if b, ok := e.render(out, q, now, tcp, s.cfg.MaxUDPSize); ok {
				q.kind = kindCache
				s.met.cacheHit()
				return b, true
			}
		}
		q.kind = kindForwarded
		s.met.cacheMiss()
		return nil, false
	}
	a := s.catalogAnswer(q.key, q.domOff)
	q.kind = a.kind
	if a.async {
		return nil, false // asked of Remote, which may block
	}
	return render(out, a.wire(s, slotFor(tcp, q)), q, ra), true
}

// serveTCP serves DNS over TCP on l with miekg/dns's server until ctx ends.
func (s *Server) serveTCP(ctx context.Context, l net.Listener) error {
	started := make(chan struct{})
	srv := &mdns.Server{
		Listener:          l,
		Net:               "tcp",
		Handler:           tcpHandler{s},
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      5 * time.Second,
		IdleTimeout:       func() time.Duration { return 10 * time.Second },
		NotifyStartedFunc: func() { close(started) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()
	select {
	case err := <-errc:
		return fmt.Errorf("dns: tcp %s: %w", l.Addr(), err)
	case <-started:
	}
	select {
	case err := <-errc:
		return fmt.Errorf("dns: tcp %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.ShutdownContext(sctx); err != nil {
		s.log.Debug("tcp shutdown", "err", err)
	}
	<-errc
	return nil
}

// tcpHandler answers queries that miekg/dns's TCP server parsed.
type tcpHandler struct{ s *Server }

func (h tcpHandler) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	s := h.s
	var start time.Time
	if s.met != nil {
		start = time.Now()
	}
	var keybuf [keyCap]byte
	var namebuf [256]byte
	q := s.fromMsg(req, &keybuf, &namebuf)
	var src netip.Addr
	if a, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		src = a.AddrPort().Addr().Unmap()
	}
	resp, done := s.reply(nil, &q, src, true)
	if !done {
		s.mu.Lock()
		ctx := s.ctx
		s.mu.Unlock()
		resp = s.forward(ctx, nil, &q, src, true)
	}
	if _, err := w.Write(resp); err != nil {
		s.log.Debug("tcp write", "to", w.RemoteAddr(), "err", err)
	}
	s.met.done(&q, resp, start)
}
