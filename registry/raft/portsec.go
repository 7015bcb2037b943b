package raft

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// Who may use the server port. Raft on it accepts AppendEntries from
// whoever connects, and its internal HTTP answers forwarded API requests
// and the mirror of the agreed state, so an open port lets anyone who
// reaches it forge the agreed state. A Security says how the port and its
// dialers authenticate:
//
//   - CertSecurity: mutual TLS with the operator's certificates, with
//     Consul's tls.internal_rpc semantics (verify_incoming refuses
//     connections without a certificate the CA signed, verify_outgoing
//     dials with TLS and checks the server's).
//   - KeyringSecurity: with only a gossip key, mutual TLS 1.3 where each
//     side's identity is an ed25519 key derived from a gossip key (keyid.go):
//     a peer is accepted only if its key derives from one in this agent's
//     keyring, so keyring rotation carries the server port along.
//   - nil: plain, as before; the README says what that exposes.
//
// TLS rides inside the port's first-byte mux: a connection that opens with
// tlsByte is a TLS stream, inside which the first byte tells Raft from HTTP
// again. The port stays one port, and a group can move from plain to TLS
// one server at a time (as Consul's, plain is still taken without
// verify_incoming).

// tlsByte opens a TLS connection on the server port (Consul's RPCTLS).
const tlsByte = 0x04

// Security is how the server port authenticates; nil is plain.
type Security struct {
	server *tls.Config // answers TLS connections; nil: refuses them
	client *tls.Config // dials with TLS; nil: dials plain
	// requireTLS refuses plain connections.
	requireTLS bool
	// ready is false while the keys to check peers with are not known yet
	// (the keyring is loaded after the port opens): connections are
	// refused and dials fail until then.
	ready func() bool
	// keys, in keyring mode, rechecks a connection's peer against the
	// keyring as it is used (keyid.go); nil otherwise.
	keys *keyring
	log  *slog.Logger
	// warned is when a refused connection was last logged: a scanner
	// must not flood the log.
	warned atomic.Int64
}

// CertConfig is Consul's tls.internal_rpc: the files and what is verified.
type CertConfig struct {
	CAFile, CertFile, KeyFile string
	// VerifyIncoming requires every connection to be TLS with a client
	// certificate signed by CAFile; without it plain connections are still
	// taken, and TLS ones may show a certificate (checked if shown).
	VerifyIncoming bool
	// VerifyOutgoing dials other servers with TLS, presents CertFile and
	// checks their certificate against CAFile; without it dials are plain.
	VerifyOutgoing bool
	// ServerName, when set (verify_server_hostname), must be a DNS name of
	// the certificate a dialled server shows, as Consul's
	// server.<datacenter>.<domain>.
	ServerName string
}

// Enabled reports whether any TLS setting is given.
func (c CertConfig) Enabled() bool {
	return c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" || c.VerifyIncoming || c.VerifyOutgoing
}

// Validate names the setting that is missing; it reads no file.
func (c CertConfig) Validate() error {
	switch {
	case (c.CertFile == "") != (c.KeyFile == ""):
		return errors.New("tls.internal_rpc: cert_file and key_file go together")
	case c.CertFile == "":
		return errors.New("tls.internal_rpc: the server port's TLS needs cert_file and key_file")
	case c.VerifyIncoming && c.CAFile == "":
		return errors.New("tls.internal_rpc.verify_incoming needs ca_file: the CA that signs the agents' certificates")
	case c.VerifyOutgoing && c.CAFile == "":
		return errors.New("tls.internal_rpc.verify_outgoing needs ca_file: the CA that signs the servers' certificates")
	}
	return nil
}

// CertSecurity loads the files of c; errors name the setting.
func CertSecurity(c CertConfig, log *slog.Logger) (*Security, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls.internal_rpc: cert_file/key_file: %w", err)
	}
	var pool *x509.CertPool
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.internal_rpc: ca_file: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.internal_rpc: ca_file %s holds no PEM certificate", c.CAFile)
		}
	}
	s := &Security{requireTLS: c.VerifyIncoming, log: orDiscard(log)}
	s.server = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if pool != nil {
		s.server.ClientCAs = pool
		s.server.ClientAuth = tls.VerifyClientCertIfGiven
		if c.VerifyIncoming {
			s.server.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	if c.VerifyOutgoing {
		// Servers are dialled by address: the chain is checked against
		// the CA, and a name only with ServerName (Consul's
		// verify_server_hostname).
		s.client = &tls.Config{
			MinVersion:         tls.VersionTLS12,
			Certificates:       []tls.Certificate{cert},
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				return verifyChain(cs.PeerCertificates, pool, c.ServerName)
			},
		}
	}
	return s, nil
}

func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, name string) error {
	if len(certs) == 0 {
		return errors.New("raft: the server showed no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}

// DialContext dials a server port as s says (plain, or TLS with tlsByte);
// for the http.Transports of the servers' internal HTTP. The connection's
// next byte is the protocol's: Raft's, or HTTP's own.
func (s *Security) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if s != nil && s.ready != nil && !s.ready() {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("raft: the keyring is not loaded yet")}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil || s == nil || s.client == nil {
		return c, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(handshakeTimeout))
	}
	tc := tls.Client(c, s.client)
	if _, err := c.Write([]byte{tlsByte}); err != nil {
		c.Close()
		return nil, err
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		// A dial error to the callers: the request never reached the
		// server, so it may be tried on another.
		return nil, &net.OpError{Op: "dial", Net: network, Addr: c.RemoteAddr(), Err: fmt.Errorf("TLS handshake: %w", err)}
	}
	c.SetDeadline(time.Time{})
	return s.keys.watch(tc), nil
}

// accept turns a connection whose first byte is first into the stream the
// port dispatches (the TLS stream for tlsByte) and that stream's first
// byte; ok false: refused, c is closed.
func (s *Security) accept(c net.Conn, first byte) (conn net.Conn, b byte, ok bool) {
	if s == nil {
		return c, first, true
	}
	if s.ready != nil && !s.ready() {
		c.Close()
		return nil, 0, false
	}
	if first != tlsByte {
		if s.requireTLS {
			s.refused(c, errors.New("a plain connection, and this port takes TLS only"))
			return nil, 0, false
		}
		return c, first, true
	}
	if s.server == nil {
		s.refused(c, errors.New("a TLS connection, and this port has no certificate"))
		return nil, 0, false
	}
	tc := tls.Server(c, s.server)
	// The deadline sniff set covers the handshake and the inner byte.
	if err := tc.Handshake(); err != nil {
		s.refused(c, err)
		return nil, 0, false
	}
	var one [1]byte
	if _, err := io.ReadFull(tc, one[:]); err != nil {
		tc.Close()
		return nil, 0, false
	}
	return s.keys.watch(tc), one[0], true
}

// refusedEvery bounds how often a refused connection is logged.
const refusedEvery = 10 * time.Second

func (s *Security) refused(c net.Conn, why error) {
	now := time.Now().UnixNano()
	if last := s.warned.Load(); now-last >= int64(refusedEvery) && s.warned.CompareAndSwap(last, now) {
		s.log.Warn("raft: server port refused a connection (more are logged at most every 10s)", "from", c.RemoteAddr().String(), "why", why)
	}
	c.Close()
}
