package proxy

import (
	"net"
	"runtime"
	"sync"
	"time"
)

// batchConn is a connection whose writes go out from a goroutine of their
// own, those made while a write is under way together in one system call.
//
// Go's HTTP/2 server and client write one frame at a time and flush each:
// a relayed gRPC call is a HEADERS, a DATA and a trailing HEADERS frame to
// the client, and HEADERS, DATA and an empty END_STREAM DATA frame to the
// instance, each waited for before the next is made, so each is a system
// call of its own (and on loopback the receiver's work is done in that
// call too). Here Write only appends to a buffer and returns; the frames
// that follow within the microseconds before the writing goroutine runs
// join the same write. Nothing waits for a timer: a lone frame goes out as
// soon as the goroutine runs.
//
// A write error is returned by the next Write (and Close); Write blocks
// while batchMax bytes wait, so a client that does not read still holds up
// its connection's writers as it would with direct writes.
type batchConn struct {
	net.Conn

	mu      sync.Mutex
	drained sync.Cond     // signalled when the writing goroutine takes or ends a batch
	pending []byte        // written, not yet handed to the kernel
	spare   []byte        // the buffer of the batch before, reused
	writing bool          // the writing goroutine runs
	on      bool          // batching; before, Write is the connection's
	defer_  bool          // Write only appends: the writer flushes (flushNow, flushAsync)
	err     error         // the first write error, returned from then on
	timeout time.Duration // bounds each write to the kernel (0: none); set before the first Write
}

// batchMax bounds the bytes waiting to be written before Write blocks.
const batchMax = 256 << 10

// batchKeep is the largest buffer kept between batches; a bigger one (a
// large body went through) is let go rather than held by an idle connection.
const batchKeep = 16 << 10

func newBatchConn(c net.Conn, on bool) *batchConn {
	b := &batchConn{Conn: c, on: on}
	b.drained.L = &b.mu
	return b
}

// start turns batching on, before anything else writes to the connection.
func (c *batchConn) start() { c.on = true }

func (c *batchConn) Write(b []byte) (int, error) {
	if !c.on {
		return c.Conn.Write(b)
	}
	c.mu.Lock()
	for c.err == nil && len(c.pending) >= batchMax {
		c.drained.Wait()
	}
	if err := c.err; err != nil {
		c.mu.Unlock()
		return 0, err
	}
	c.pending = append(c.pending, b...)
	if !c.writing && (!c.defer_ || len(c.pending) >= batchMax) {
		c.writing = true
		go c.flush()
	}
	c.mu.Unlock()
	return len(b), nil
}

// flushNow writes what is pending from the calling goroutine, and what
// others append meanwhile, unless a flush is under way (which takes it
// up): with deferred writes, a lone answer costs no goroutine. With yield
// (other writers are at work on the connection) it first lets the
// goroutines ready to run go.
func (c *batchConn) flushNow(yield bool) {
	c.mu.Lock()
	if c.writing || len(c.pending) == 0 || c.err != nil {
		c.mu.Unlock()
		return
	}
	c.writing = true
	c.mu.Unlock()
	if yield {
		// Under load the goroutines ready to run are other streams'
		// answers, whose frames then join this write (with h2load's 8
		// streams per connection, 1.3 writes per answer rather than 2, and
		// a fifth less CPU per request). Not when the writer is alone:
		// Gosched wakes an idle thread to look for work (runtime.wakep),
		// and finding none it sleeps again, two context switches for
		// nothing on every answer at a low rate.
		runtime.Gosched()
	}
	c.flush()
}

// flushAsync has what is pending written by a goroutine of its own, for
// a caller that must not block on the client (one that reads it).
func (c *batchConn) flushAsync() {
	c.mu.Lock()
	if !c.writing && len(c.pending) > 0 && c.err == nil {
		c.writing = true
		go c.flush()
	}
	c.mu.Unlock()
}

// flush writes what is pending, batch after batch, until nothing is.
func (c *batchConn) flush() {
	c.mu.Lock()
	for len(c.pending) > 0 && c.err == nil {
		buf := c.pending
		c.pending = c.spare[:0]
		c.mu.Unlock()
		if c.timeout > 0 {
			c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
		}
		_, err := c.Conn.Write(buf)
		c.mu.Lock()
		if cap(buf) <= batchKeep {
			c.spare = buf[:0]
		} else {
			c.spare = nil
		}
		if err != nil {
			c.err = err
		}
		c.drained.Broadcast()
	}
	c.pending = c.pending[:0]
	if c.err != nil || cap(c.pending) > batchKeep {
		c.pending = nil
	}
	c.writing = false
	c.drained.Broadcast()
	c.mu.Unlock()
}

// Close sends what is pending (a GOAWAY, say), for at most a second, then
// closes the connection.
func (c *batchConn) Close() error {
	if c.on {
		c.mu.Lock()
		if !c.writing && len(c.pending) > 0 && c.err == nil {
			c.writing = true // deferred writes not flushed yet
			go c.flush()
		}
		if c.writing {
			c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		}
		for c.writing {
			c.drained.Wait()
		}
		c.mu.Unlock()
	}
	return c.Conn.Close()
}

// batchListener accepts connections whose batching is off until start.
type batchListener struct{ net.Listener }

func (l batchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newBatchConn(c, false), nil
}
