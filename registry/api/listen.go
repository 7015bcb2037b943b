package api

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
)

// TLS is the HTTP API over TLS, with Consul's names: ports.https, ca_file,
// cert_file, key_file and verify_incoming.
type TLS struct {
	Port           int // -1: off (Consul's default); 0: any free port
	CAFile         string
	CertFile       string
	KeyFile        string
	VerifyIncoming bool // require client certificates signed by CAFile
}

// Validate names the setting that is missing or out of range.
func (t TLS) Validate() error {
	switch {
	case t.Port < -1 || t.Port > 65535:
		return fmt.Errorf("https port %d: out of range (-1 for off, 0-65535)", t.Port)
	case t.Port == -1:
		return nil
	case t.CertFile == "" || t.KeyFile == "":
		return errors.New("the HTTPS API needs cert_file and key_file")
	case t.VerifyIncoming && t.CAFile == "":
		return errors.New("verify_incoming needs ca_file: the CA that signs the clients' certificates")
	}
	return nil
}

// ServerConfig builds the listener's TLS settings: TLS 1.2 or newer with
// Go's modern cipher suites, and client certificates checked against
// CAFile when one is given (required with VerifyIncoming, as Consul).
func (t TLS) ServerConfig() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("HTTPS API: cert_file/key_file: %w", err)
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if t.CAFile == "" {
		return c, nil
	}
	pem, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, fmt.Errorf("HTTPS API: ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("HTTPS API: ca_file holds no PEM certificate")
	}
	c.ClientCAs = pool
	c.ClientAuth = tls.VerifyClientCertIfGiven
	if t.VerifyIncoming {
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// Listeners are the API's open sockets: one per client address over plain
// HTTP, and as many over HTTPS when TLS is on.
type Listeners struct {
	HTTP, HTTPS []net.Listener
}

// Listen opens the API on every host at port (and at t.Port over TLS when
// t.Port is not -1). It opens all or none: on an error, what it had opened
// is closed, so the agent can fail before it starts anything.
func Listen(hosts []string, port int, t TLS) (*Listeners, error) {
	l := &Listeners{}
	var tc *tls.Config
	if t.Port >= 0 {
		var err error
		if tc, err = t.ServerConfig(); err != nil {
			return nil, err
		}
	}
	for _, host := range hosts {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("HTTP API: %w", err)
		}
		l.HTTP = append(l.HTTP, ln)
		if tc == nil {
			continue
		}
		if ln, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(t.Port))); err != nil {
			l.Close()
			return nil, fmt.Errorf("HTTPS API: %w", err)
		}
		l.HTTPS = append(l.HTTPS, tls.NewListener(ln, tc))
	}
	return l, nil
}

// All answers every listener, plain first.
func (l *Listeners) All() []net.Listener {
	return append(append([]net.Listener(nil), l.HTTP...), l.HTTPS...)
}

// Close closes every listener.
func (l *Listeners) Close() {
	for _, ln := range l.All() {
		ln.Close()
	}
}

// Addrs answers the bound addresses of lns (the real ports when 0 was asked).
func Addrs(lns []net.Listener) []string {
	out := make([]string, 0, len(lns))
	for _, ln := range lns {
		out = append(out, ln.Addr().String())
	}
	return out
}
