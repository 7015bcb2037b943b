package raft

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// serveHTTP runs an http.Server on the port's HTTP side until the test
// ends.
func serveHTTP(t *testing.T, p *ServerPort, h http.Handler) {
	t.Helper()
	srv := &http.Server{Handler: h}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(p.HTTP()) }()
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		// Closed by Shutdown, or by the port's Close before it.
		if err := <-done; !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			t.Errorf("http.Server.Serve: %v", err)
		}
	})
}

// Raft's connections and HTTP requests share one port, and a client that
// connects and says nothing delays no one.
func TestServerPortCarriesRaftAndHTTP(t *testing.T) {
	p, err := ListenServerPort("127.0.0.1:0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	serveHTTP(t, p, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello "+r.URL.Path) }))

	silent, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	// Raft: what the dialer writes after its 0x01 arrives intact.
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := p.streamLayer().Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	rc, err := p.streamLayer().Dial(hraft.ServerAddress(p.Addr()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := rc.Write([]byte("GET raft")); err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	if sc == nil {
		t.Fatal("the raft side accepted nothing")
	}
	defer sc.Close()
	buf := make([]byte, 8)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "GET raft" {
		t.Fatalf("raft side read %q, %v", buf, err)
	}

	// HTTP, with a fresh connection each time, keeps its first byte.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for range 3 {
		resp, err := client.Get("http://" + p.Addr() + "/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "hello /x" {
			t.Fatalf("http answered %q", b)
		}
	}

	// Close drops the silent connection, which has not been handed out.
	p.Close()
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(buf); err == nil {
		t.Error("the silent connection is still open after Close")
	}
	if _, err := p.HTTP().Accept(); err == nil {
		t.Error("Accept after Close answered a connection")
	}
}

// A raw HTTP/1.1 request whose first byte is read by the port still
// parses (the byte is given back, not lost).
func TestServerPortGivesBackTheFirstByte(t *testing.T) {
	p, err := ListenServerPort("127.0.0.1:0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	serveHTTP(t, p, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Method) }))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Byte by byte: the first one alone reaches the port's sniffer.
	for _, b := range []byte("PUT / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n") {
		if _, err := c.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "PUT" {
		t.Fatalf("answered %q", b)
	}
}

func TestListenServerPortAdvertise(t *testing.T) {
	if _, err := ListenServerPort("0.0.0.0:0", "", nil); err == nil || !strings.Contains(err.Error(), "advertise") {
		t.Errorf("a wildcard bind without advertise: %v", err)
	}
	p, err := ListenServerPort("127.0.0.1:0", "127.0.0.2", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, port, _ := net.SplitHostPort(p.ln.Addr().String())
	if want := net.JoinHostPort("127.0.0.2", port); p.Addr() != want {
		t.Errorf("Addr %q, want %q", p.Addr(), want)
	}
}

// Two servers on ServerPorts form a group, and their internal HTTP on the
// same ports answers PeersHandler.
func TestServerPortGroup(t *testing.T) {
	a := startMember(t, memberOpts{id: "pa"})
	b := startMember(t, memberOpts{id: "pb"})
	list := []Server{{ID: "pa", Address: a.port.Addr(), Voter: true}, {ID: "pb", Address: b.port.Addr(), Voter: true}}
	for _, m := range []*member{a, b} {
		if err := m.n.Bootstrap(list); err != nil {
			t.Fatal(err)
		}
	}
	setKey(t, "k", a, b)
	waitKey(t, "k", a, b)
	for _, m := range []*member{a, b} {
		resp, err := http.Get("http://" + m.port.Addr() + PeersPath)
		if err != nil {
			t.Fatal(err)
		}
		var info peersInfo
		err = json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
		if err != nil || len(info.Peers) != 2 || info.LastIndex == 0 {
			t.Errorf("%s answered %+v %v", m.n.ID(), info, err)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}
