package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// apiTLS is the HTTP API over TLS, with Consul's names: ports.https (or
// -https-port), ca_file, cert_file, key_file and verify_incoming.
type apiTLS struct {
	HTTPSPort      int // -1: off; 0: any free port
	CAFile         string
	CertFile       string
	KeyFile        string
	VerifyIncoming bool // require client certificates signed by ca_file
}

func (t *apiTLS) merge(fc *fileConfig) {
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	set(&t.CAFile, fc.CAFile)
	set(&t.CertFile, fc.CertFile)
	set(&t.KeyFile, fc.KeyFile)
	if fc.VerifyIncoming != nil {
		t.VerifyIncoming = *fc.VerifyIncoming
	}
}

func (t *apiTLS) validate() error {
	switch {
	case t.HTTPSPort < -1 || t.HTTPSPort > 65535:
		return usageError{fmt.Sprintf("-https-port %d: out of range (-1 for off, 0-65535)", t.HTTPSPort)}
	case t.HTTPSPort == -1:
		return nil
	case t.CertFile == "" || t.KeyFile == "":
		return usageError{"-https-port needs cert_file and key_file in the config"}
	case t.VerifyIncoming && t.CAFile == "":
		return usageError{"verify_incoming needs ca_file: the CA that signs the clients' certificates"}
	}
	return nil
}

// config builds the server's TLS settings: TLS 1.2 or newer with Go's
// modern cipher suites, and client certificates when verify_incoming says so.
func (t *apiTLS) config() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("HTTPS API: cert_file/key_file: %w", err)
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("HTTPS API: ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("HTTPS API: ca_file holds no PEM certificate")
		}
		c.ClientCAs = pool
		if t.VerifyIncoming {
			c.ClientAuth = tls.RequireAndVerifyClientCert
		} else {
			c.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	return c, nil
}
