//go:build linux

package proxy

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/lb"
)

// The event loop's requests to the instances (evloop_fast_linux.go):
// attempts, its own non-blocking keep-alive connections, their events.

// attempt sends fr's request to a backend of its pool, as serve's
// attempts do. It reports true when the request was answered without a
// wait and fr goes on with the next one.
func (l *loop) attempt(fr *fastReq) bool {
	p := l.p
	if fr.n == 0 {
		// The request as HostClient.Do would send it.
		req := &fr.ctx.Request
		req.URI().DisablePathNormalizing = true
		f := &l.fast
		f.sink.b = fr.out[:0]
		f.bw.Reset(&f.sink)
		err := req.Write(f.bw)
		if err == nil {
			err = f.bw.Flush()
		}
		f.bw.Reset(nil)
		fr.out, f.sink.b = f.sink.b, nil
		if err != nil {
			fr.err = err
			return l.answerUnavailable(fr)
		}
	}
	for fr.n < p.cfg.Tries {
		if fr.n > 0 && p.cfg.TryTimeout > 0 && time.Since(fr.st.start) > p.cfg.TryTimeout {
			break
		}
		b := fr.st.pool.Pick(fr.tried[:fr.n])
		if b == nil {
			break
		}
		fr.tried[fr.n] = b
		fr.n++
		fr.stale = false
		err := l.send(fr, b, false)
		if err == nil {
			return false // the backend's events go on with it
		}
		if err == errNotIP {
			l.fast.handed.Add(1)
			l.workers.Add(1)
			go l.finishBlocking(fr)
			return false
		}
		fr.err = err
		if !p.tryFailed(fr.st.r, b, &fr.ctx.Request, fr.n, err) {
			break
		}
	}
	return l.answerUnavailable(fr)
}

// answerUnavailable answers 502 or 504 for fr's request.
func (l *loop) answerUnavailable(fr *fastReq) bool {
	l.p.unavailable(&fr.ctx, &fr.st, fr.err, fr.tried[:fr.n])
	return l.respond(fr, nil)
}

var errNotIP = errors.New("proxy: backend address is not an IP address")

// send starts fr's request on b: on a kept-alive connection unless fresh,
// else on a new one.
func (l *loop) send(fr *fastReq, b *lb.Backend, fresh bool) error {
	f := &l.fast
	var uc *upConn
	if cs := f.idle[b]; len(cs) > 0 && !fresh {
		uc = cs[len(cs)-1]
		cs[len(cs)-1] = nil
		if len(cs) == 1 {
			delete(f.idle, b)
		} else {
			f.idle[b] = cs[:len(cs)-1]
		}
		fr.reused = true
	} else {
		var err error
		if uc, err = l.dial(b); err != nil {
			return err
		}
		fr.reused = false
	}
	uc.fr, fr.up = fr, uc
	fr.sent, fr.rb, fr.head, fr.body = 0, fr.rb[:0], 0, 0
	l.track(fr)
	if uc.connecting {
		fr.deadline = time.Now().Add(f.cfg.ConnectTimeout).UnixNano()
		return nil
	}
	if err := l.upWrite(fr); err != nil {
		l.untrack(fr)
		uc.fr, fr.up = nil, nil
		l.closeUp(uc)
		if fr.reused && !fr.stale && l.staleOK(fr, err) {
			fr.stale = true
			return l.send(fr, b, true)
		}
		return err
	}
	return nil
}

// dial opens a non-blocking connection to b, in the loop's epoll set.
func (l *loop) dial(b *lb.Backend) (*upConn, error) {
	ap, err := netip.ParseAddrPort(b.Addr())
	if err != nil {
		return nil, errNotIP
	}
	f := &l.fast
	if f.open[b] >= f.maxOpen {
		// The loop's share of the balancer's limit: as HostClient answers
		// with no wait (the loop does not wait), the request goes to
		// another instance, and the backend is not held to fail.
		return nil, fasthttp.ErrNoFreeConns
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ap.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, &lb.DialError{Addr: b.Addr(), Err: os.NewSyscallError("socket", err)}
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	connecting := false
	err = unix.Connect(fd, sa)
	for err == unix.EINTR {
		err = unix.Connect(fd, sa)
	}
	switch err {
	case nil:
	case unix.EINPROGRESS:
		connecting = true
	default:
		unix.Close(fd)
		return nil, &lb.DialError{Addr: b.Addr(), Err: os.NewSyscallError("connect", err)}
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd), Pad: evLoopUpstream}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return nil, &lb.DialError{Addr: b.Addr(), Err: os.NewSyscallError("epoll_ctl", err)}
	}
	uc := &upConn{fd: int32(fd), b: b, connecting: connecting}
	f.open[b]++
	for fd >= len(f.ups) {
		f.ups = append(f.ups, make([]*upConn, max(len(f.ups), 64))...)
	}
	f.ups[fd] = uc
	return uc, nil
}

// closeUp closes an upstream connection (closing takes it out of the
// epoll set).
func (l *loop) closeUp(uc *upConn) {
	l.forget(uc)
	unix.Close(int(uc.fd))
	uc.fd = -1
}

// forget takes uc out of the loop's tables.
func (l *loop) forget(uc *upConn) {
	f := &l.fast
	if int(uc.fd) < len(f.ups) && f.ups[uc.fd] == uc {
		f.ups[uc.fd] = nil
		if f.open[uc.b]--; f.open[uc.b] <= 0 {
			delete(f.open, uc.b)
		}
	}
}

// detachUp takes uc out of the loop: its descriptor is a goroutine's now.
func (l *loop) detachUp(uc *upConn) int {
	l.forget(uc)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(uc.fd), nil)
	fd := int(uc.fd)
	uc.fd = -1
	return fd
}

func (l *loop) track(fr *fastReq) {
	if !fr.inReqs {
		fr.inReqs = true
		l.fast.reqs = append(l.fast.reqs, fr)
	}
}

func (l *loop) untrack(fr *fastReq) {
	if !fr.inReqs {
		return
	}
	fr.inReqs = false
	fr.deadline = 0
	rs := l.fast.reqs
	for i, x := range rs {
		if x == fr {
			rs[i] = rs[len(rs)-1]
			rs[len(rs)-1] = nil
			l.fast.reqs = rs[:len(rs)-1]
			return
		}
	}
}

// staleOK reports whether a kept-alive connection's failure before any
// byte of an answer is the backend having closed it while it sat in the
// pool, to be tried once more on a fresh one (lb's retryStaleConn).
func (l *loop) staleOK(fr *fastReq, err error) bool {
	if len(fr.rb) > 0 || !lb.Idempotent(fr.ctx.Request.Header.Method()) {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)
}

// upWrite sends what is left of fr's request.
func (l *loop) upWrite(fr *fastReq) error {
	uc := fr.up
	for fr.sent < len(fr.out) {
		k, err := loopWrite(int(uc.fd), fr.out[fr.sent:])
		if k > 0 {
			fr.sent += k
		}
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			if wt := l.fast.cfg.WriteTimeout; wt > 0 {
				fr.deadline = time.Now().Add(wt).UnixNano()
			} else {
				fr.deadline = 0
			}
			return nil
		case err != nil:
			return os.NewSyscallError("write", err)
		}
	}
	if rt := l.fast.cfg.ReadTimeout; rt > 0 {
		fr.deadline = time.Now().Add(rt).UnixNano()
	} else {
		fr.deadline = 0
	}
	return nil
}

// upEvent handles an event of an upstream connection.
func (l *loop) upEvent(uc *upConn, events uint32) {
	fr := uc.fr
	if fr == nil {
		l.idleEvent(uc, events)
		return
	}
	if uc.connecting {
		if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		errno, err := unix.GetsockoptInt(int(uc.fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && errno != 0 {
			err = unix.Errno(errno)
		}
		if err != nil {
			l.upError(fr, &lb.DialError{Addr: uc.b.Addr(), Err: os.NewSyscallError("connect", err)})
			return
		}
		uc.connecting = false
	}
	if fr.sent < len(fr.out) {
		if err := l.upWrite(fr); err != nil {
			l.upError(fr, err)
			return
		}
		if fr.sent < len(fr.out) {
			return
		}
	}
	l.upRead(fr)
}

// idleEvent: a kept-alive connection in the pool became readable or was
// closed. An event left over from its last response finds nothing.
func (l *loop) idleEvent(uc *upConn, events uint32) {
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		return
	}
	var b [1]byte
	_, _, err := unix.Recvfrom(int(uc.fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if err == unix.EAGAIN {
		return
	}
	f := &l.fast
	cs := f.idle[uc.b]
	for i, x := range cs {
		if x == uc {
			copy(cs[i:], cs[i+1:])
			cs[len(cs)-1] = nil
			if len(cs) == 1 {
				delete(f.idle, uc.b)
			} else {
				f.idle[uc.b] = cs[:len(cs)-1]
			}
			break
		}
	}
	l.closeUp(uc)
}

// upError ends fr's attempt on its backend with err: once more on a fresh
// connection if a kept-alive one was found closed, else as serve's
// attempts do.
func (l *loop) upError(fr *fastReq, err error) {
	l.untrack(fr)
	uc := fr.up
	if uc != nil {
		uc.fr, fr.up = nil, nil
		l.closeUp(uc)
	}
	b := fr.tried[fr.n-1]
	if fr.reused && !fr.stale && l.staleOK(fr, err) {
		fr.stale = true
		if err = l.send(fr, b, true); err == nil {
			return
		}
	}
	fr.err = err
	var sync bool
	if l.p.tryFailed(fr.st.r, b, &fr.ctx.Request, fr.n, err) {
		sync = l.attempt(fr)
	} else {
		sync = l.answerUnavailable(fr)
	}
	if sync {
		l.resume(fr)
	}
}

// upRead reads the backend's response to fr.
func (l *loop) upRead(fr *fastReq) {
	uc := fr.up
	for {
		if len(fr.rb) == cap(fr.rb) {
			if cap(fr.rb) >= fastRespMax {
				l.streamUp(fr)
				return
			}
			fr.rb = append(fr.rb, make([]byte, min(2*cap(fr.rb), fastRespMax)-len(fr.rb))...)[:len(fr.rb)]
		}
		space := fr.rb[len(fr.rb):cap(fr.rb)]
		n, err := loopRead(int(uc.fd), space)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			l.upError(fr, os.NewSyscallError("read", err))
			return
		case n == 0:
			if len(fr.rb) == 0 {
				l.upError(fr, io.EOF)
			} else {
				l.upError(fr, io.ErrUnexpectedEOF)
			}
			return
		}
		fr.rb = fr.rb[:len(fr.rb)+n]
		if rt := l.fast.cfg.ReadTimeout; rt > 0 {
			fr.deadline = time.Now().Add(rt).UnixNano()
		}
		switch done, extra, err := l.complete(fr); {
		case err != nil:
			l.upError(fr, err)
			return
		case done == respStream:
			l.streamUp(fr)
			return
		case done == respDone:
			l.upDone(fr, extra)
			return
		}
		if n < len(space) {
			if fr.head > 0 && fr.body < 0 {
				// A chunked response the backend paused in (a flush, a
				// stream of events) reaches the client as it comes, as on
				// the goroutines: a goroutine streams it.
				l.streamUp(fr)
			}
			return // drained: the next bytes make an edge
		}
	}
}
