package main

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/raft"
)

// mergeAPITLS takes the HTTPS API's settings from a config file, under
// Consul's names (ports.https is merged with the other ports).
func mergeAPITLS(t *api.TLS, fc *fileConfig) {
	fileSets(&t.CAFile, fc.CAFile)
	fileSets(&t.CertFile, fc.CertFile)
	fileSets(&t.KeyFile, fc.KeyFile)
	fileSets(&t.VerifyIncoming, fc.VerifyIncoming)
}

// tlsFile is Consul's tls stanza. pier reads the part for the server port
// (internal_rpc, over defaults); the HTTPS API keeps the top-level keys
// above. The top-level keys do not turn on the server port's TLS: a file
// written for the HTTPS API alone would otherwise make servers refuse
// each other (verify_incoming without verify_outgoing).
type tlsFile struct {
	Defaults    *tlsSection
	InternalRPC *tlsSection
}

type tlsSection struct {
	CAFile               *string
	CertFile             *string
	KeyFile              *string
	VerifyIncoming       *bool
	VerifyOutgoing       *bool
	VerifyServerHostname *bool
}

// internalTLS is the server port's TLS as configured.
type internalTLS struct {
	raft.CertConfig
	VerifyServerHostname bool // check that a server's certificate names server.<dc>.<domain>
}

func (t *internalTLS) merge(f *tlsFile) {
	if f == nil {
		return
	}
	for _, s := range []*tlsSection{f.Defaults, f.InternalRPC} {
		if s == nil {
			continue
		}
		fileSets(&t.CAFile, s.CAFile)
		fileSets(&t.CertFile, s.CertFile)
		fileSets(&t.KeyFile, s.KeyFile)
		fileSets(&t.VerifyIncoming, s.VerifyIncoming)
		fileSets(&t.VerifyOutgoing, s.VerifyOutgoing)
		fileSets(&t.VerifyServerHostname, s.VerifyServerHostname)
	}
}

// serverPortSecurity decides how the server port authenticates: with the
// operator's certificates when tls.internal_rpc has any, else with the
// gossip keyring when gossip is encrypted, else not at all. keys answers
// the keyring once gossip is built.
func serverPortSecurity(cfg agentConfig, keys raft.KeySource, log *slog.Logger) (*raft.Security, error) {
	if t := cfg.InternalTLS; t.Enabled() {
		c := t.CertConfig
		if t.VerifyServerHostname {
			c.ServerName = "server." + cfg.Datacenter + "." + strings.TrimSuffix(cfg.DNS.Domain, ".")
		}
		return raft.CertSecurity(c, log)
	}
	if cfg.encrypted() {
		return raft.KeyringSecurity(keys, log), nil
	}
	return nil, nil
}

// keyringFile is where gossip keeps the rotated keyring; "" without a
// data dir.
func (c agentConfig) keyringFile() string {
	if c.DataDir == "" {
		return ""
	}
	return filepath.Join(c.DataDir, "keyring.json")
}

// encrypted reports whether gossip will be encrypted: -encrypt, or a
// keyring kept in the data dir (which wins over -encrypt).
func (c agentConfig) encrypted() bool {
	if c.Encrypt != "" {
		return true
	}
	f := c.keyringFile()
	if f == "" {
		return false
	}
	_, err := os.Stat(f)
	return !errors.Is(err, fs.ErrNotExist)
}
