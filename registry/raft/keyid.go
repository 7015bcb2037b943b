package raft

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// With only a gossip key, every agent that holds a key of the keyring is
// one of the cluster, and nobody else is: the server port's identities are
// derived from the keys. Each key gives one ed25519 key pair (HKDF-SHA256
// of the gossip key, so every agent derives the same pair from the same
// key); an agent shows the pair of its primary key in a self-signed
// certificate and accepts a peer whose certificate's public key is the
// pair of any key in its keyring. TLS 1.3's CertificateVerify proves the
// peer holds the private key, so a peer without a gossip key cannot pass,
// and a recorded handshake cannot be replayed. Rotation as consul keyring
// does it (install everywhere, use, remove) keeps every pair of agents
// able to connect at each step: each side always has the other's primary.

// keyIDInfo binds the derived key to its use: the same gossip key gives
// other keys for anything else that derives from it.
const keyIDInfo = "pier server port identity v1"

// KeySource answers the gossip keyring: the primary key and every key
// (the primary among them). ok is false while it is not known yet.
type KeySource func() (primary []byte, keys [][]byte, ok bool)

// keyIdentity is the TLS identity of one gossip key.
type keyIdentity struct {
	pub  ed25519.PublicKey
	cert tls.Certificate
}

// keyring derives and caches the identities of the keys a KeySource
// answers.
type keyring struct {
	src KeySource
	mu  sync.Mutex
	ids map[string]*keyIdentity // by gossip key
}

// derivePublicKey answers the identity key pair of a gossip key.
func deriveKey(gossipKey []byte) (ed25519.PrivateKey, error) {
	seed, err := hkdf.Key(sha256.New, gossipKey, nil, keyIDInfo, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

func (k *keyring) identity(gossipKey []byte) (*keyIdentity, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if id, ok := k.ids[string(gossipKey)]; ok {
		return id, nil
	}
	priv, err := deriveKey(gossipKey)
	if err != nil {
		return nil, err
	}
	// The certificate is only a carrier of the public key: its name,
	// serial and dates are not checked by the peer (verifyPeer).
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pier server port"},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return nil, err
	}
	id := &keyIdentity{pub: priv.Public().(ed25519.PublicKey), cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}}
	if k.ids == nil {
		k.ids = map[string]*keyIdentity{}
	}
	if len(k.ids) > 64 { // keys removed long ago; a keyring holds a few
		clear(k.ids)
	}
	k.ids[string(gossipKey)] = id
	return id, nil
}

// own answers the certificate of the primary key.
func (k *keyring) own() (*tls.Certificate, error) {
	primary, _, ok := k.src()
	if !ok || len(primary) == 0 {
		return nil, errors.New("raft: no gossip key to show")
	}
	id, err := k.identity(primary)
	if err != nil {
		return nil, err
	}
	return &id.cert, nil
}

// allowed reports whether pub is the identity of a key in the keyring now.
func (k *keyring) allowed(pub ed25519.PublicKey) error {
	_, keys, ok := k.src()
	if !ok {
		return errors.New("raft: the keyring is not loaded yet")
	}
	for _, key := range keys {
		id, err := k.identity(key)
		if err == nil && bytes.Equal(id.pub, pub) {
			return nil
		}
	}
	return errors.New("raft: the peer's certificate is of no key in this agent's keyring")
}

// recheckEvery is how often a connection's peer is checked against the
// keyring again while it is used: a key removed from the keyring cuts the
// connections made with it within about this, not only new ones (Raft's
// pooled connections would otherwise outlive a rotation for good).
const recheckEvery = time.Second

// watch wraps a handshaken connection of keyring mode so that it fails
// once its peer's key leaves the keyring; other connections are answered
// as they are.
func (k *keyring) watch(tc *tls.Conn) net.Conn {
	if k == nil {
		return tc
	}
	certs := tc.ConnectionState().PeerCertificates
	pub, _ := certs[0].PublicKey.(ed25519.PublicKey) // verifyPeer made sure
	kc := &keyedConn{Conn: tc, k: k, pub: pub}
	kc.checked.Store(time.Now().UnixNano())
	return kc
}

// keyedConn is a connection whose peer showed the identity pub.
type keyedConn struct {
	net.Conn
	k       *keyring
	pub     ed25519.PublicKey
	checked atomic.Int64 // unix nanoseconds of the last check
}

func (c *keyedConn) recheck(op string) error {
	now := time.Now().UnixNano()
	last := c.checked.Load()
	if now-last < int64(recheckEvery) || !c.checked.CompareAndSwap(last, now) {
		return nil
	}
	if err := c.k.allowed(c.pub); err != nil {
		c.Conn.Close()
		return &net.OpError{Op: op, Net: "tcp", Addr: c.RemoteAddr(), Err: err}
	}
	return nil
}

func (c *keyedConn) Read(b []byte) (int, error) {
	if err := c.recheck("read"); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *keyedConn) Write(b []byte) (int, error) {
	if err := c.recheck("write"); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// verifyPeer accepts a peer whose leaf certificate carries the identity
// of a key in the keyring now.
func (k *keyring) verifyPeer(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return errors.New("raft: the peer showed no certificate")
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return fmt.Errorf("raft: the peer's certificate: %w", err)
	}
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok {
		return errors.New("raft: the peer's certificate is not of a gossip key")
	}
	return k.allowed(pub)
}

// KeyringSecurity authenticates the server port with identities derived
// from the gossip keyring that src answers: mutual TLS 1.3, plain
// connections refused, and nothing accepted or dialled while src is not
// ok.
func KeyringSecurity(src KeySource, log *slog.Logger) *Security {
	k := &keyring{src: src}
	base := tls.Config{
		MinVersion: tls.VersionTLS13,
		// The peer is checked by its key alone (verifyPeer).
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: k.verifyPeer,
	}
	server := base.Clone()
	server.ClientAuth = tls.RequireAnyClientCert
	server.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return k.own() }
	client := base.Clone()
	client.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return k.own() }
	return &Security{server: server, client: client, requireTLS: true, keys: k, log: orDiscard(log),
		ready: func() bool { _, _, ok := src(); return ok }}
}
