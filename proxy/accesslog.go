package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/pier-dev/pier/lb"
)

// Access log formats (Config.AccessLog).
const (
	AccessLogOff      = "off"
	AccessLogCombined = "combined" // nginx's and Apache's combined format
	AccessLogJSON     = "json"     // one JSON object a line
)

// accessLog writes one line per request into a buffer that Run flushes
// every second (and whenever it fills), so a request costs a formatted
// append and a short critical section, not a write system call. Lines
// are built in pooled buffers without slog: no allocation per request.
type accessLog struct {
	json bool
	pool sync.Pool // *logEntry

	mu sync.Mutex
	w  *bufio.Writer
}

// logEntry carries what the log needs from a request's start to its end:
// the URI as the client sent it (the proxy rewrites it) and the buffer the
// line is built in.
type logEntry struct {
	uri  []byte
	line []byte
}

func newAccessLog(format string, w io.Writer) (*accessLog, error) {
	switch format {
	case "", AccessLogOff:
		return nil, nil
	case AccessLogCombined, AccessLogJSON:
	default:
		return nil, fmt.Errorf("proxy: access_log %q: want combined, json or off", format)
	}
	l := &accessLog{json: format == AccessLogJSON, w: bufio.NewWriterSize(w, 64<<10)}
	l.pool.New = func() any { return &logEntry{uri: make([]byte, 0, 256), line: make([]byte, 0, 512)} }
	return l, nil
}

// begin takes an entry for a request whose URI is uri; nil when the access
// log is off.
func (l *accessLog) begin(uri []byte) *logEntry {
	if l == nil {
		return nil
	}
	e := l.pool.Get().(*logEntry)
	e.uri = append(e.uri[:0], uri...)
	return e
}

// drop returns an entry begin took for a request that another path will
// serve and log (the event loop handing a request to its goroutines).
func (l *accessLog) drop(e *logEntry) {
	if l != nil && e != nil {
		l.pool.Put(e)
	}
}

// accessFields are what a line says about one request.
type accessFields struct {
	ip                               netip.Addr
	method, host, proto, ref, ua, id []byte
	status, size                     int
	grpcStatus                       string // "" for a request that is not a gRPC call
}

// write logs the request of e and returns e to the pool.
func (l *accessLog) write(e *logEntry, ctx *fasthttp.RequestCtx, now, start time.Time, service string, b *lb.Backend, tries int) {
	if l == nil || e == nil {
		return
	}
	ip, _ := netip.AddrFromSlice(ctx.RemoteIP())
	h := &ctx.Request.Header
	f := accessFields{ip: ip.Unmap(), method: h.Method(), host: h.Host(), proto: h.Protocol(), ref: h.Referer(), ua: h.UserAgent(),
		id: h.Peek("X-Request-Id"), status: ctx.Response.StatusCode(), size: ctx.Response.Header.ContentLength()}
	if isH2(ctx) {
		f.proto = []byte("HTTP/2.0") // the request goes on as HTTP/1.1, which its header says
	}
	l.writeFields(e, &f, now, start, service, b, tries)
}

// writeH2 logs a request served by the HTTP/2 server itself (a gRPC call,
// grpcStatus "none" when it ended without one; a WebSocket, grpcStatus "").
func (l *accessLog) writeH2(req *http.Request, code int, now, start time.Time, service string, b *lb.Backend, tries int, grpcStatus string) {
	e := l.begin([]byte(req.RequestURI))
	if e == nil {
		return
	}
	var ip netip.Addr
	if ap, err := netip.ParseAddrPort(req.RemoteAddr); err == nil {
		ip = ap.Addr().Unmap()
	}
	f := accessFields{ip: ip, method: []byte(req.Method), host: []byte(req.Host), proto: []byte(req.Proto), ref: []byte(req.Referer()),
		ua: []byte(req.UserAgent()), id: []byte(req.Header.Get("X-Request-Id")), status: code, size: -1, grpcStatus: grpcStatus}
	l.writeFields(e, &f, now, start, service, b, tries)
}

func (l *accessLog) writeFields(e *logEntry, f *accessFields, now, start time.Time, service string, b *lb.Backend, tries int) {
	line := e.line[:0]
	status, size := f.status, f.size
	backend := ""
	if b != nil {
		backend = b.Addr()
	}
	if l.json {
		line = append(line, `{"time":"`...)
		line = now.AppendFormat(line, time.RFC3339Nano)
		line = append(line, `","remote":"`...)
		line = f.ip.AppendTo(line)
		line = append(line, '"')
		line = appendJSONField(line, "method", f.method)
		line = appendJSONField(line, "host", f.host)
		line = appendJSONField(line, "uri", e.uri)
		line = append(line, `,"status":`...)
		line = strconv.AppendInt(line, int64(status), 10)
		line = append(line, `,"bytes":`...)
		line = strconv.AppendInt(line, int64(max(size, 0)), 10)
		line = append(line, `,"duration":`...)
		line = strconv.AppendFloat(line, now.Sub(start).Seconds(), 'f', 6, 64)
		line = appendJSONField(line, "service", service)
		line = appendJSONField(line, "backend", backend)
		line = append(line, `,"tries":`...)
		line = strconv.AppendInt(line, int64(tries), 10)
		line = appendJSONField(line, "request_id", f.id)
		line = appendJSONField(line, "referer", f.ref)
		line = appendJSONField(line, "user_agent", f.ua)
		if f.grpcStatus != "" {
			line = appendJSONField(line, "grpc_status", f.grpcStatus)
		}
		if string(f.proto) != "HTTP/1.1" {
			line = appendJSONField(line, "protocol", f.proto)
		}
		line = append(line, "}\n"...)
	} else {
		// $remote_addr - $remote_user [$time_local] "$request" $status
		// $body_bytes_sent "$http_referer" "$http_user_agent"
		line = f.ip.AppendTo(line)
		line = append(line, " - - ["...)
		line = now.AppendFormat(line, "02/Jan/2006:15:04:05 -0700")
		line = append(line, `] "`...)
		line = appendQuoted(line, f.method)
		line = append(line, ' ')
		line = appendQuoted(line, e.uri)
		line = append(line, ' ')
		line = appendQuoted(line, f.proto)
		line = append(line, `" `...)
		line = strconv.AppendInt(line, int64(status), 10)
		line = append(line, ' ')
		if size >= 0 {
			line = strconv.AppendInt(line, int64(size), 10)
		} else {
			line = append(line, '-')
		}
		line = append(line, ` "`...)
		line = appendQuotedOrDash(line, f.ref)
		line = append(line, `" "`...)
		line = appendQuotedOrDash(line, f.ua)
		line = append(line, '"')
		if f.grpcStatus != "" {
			// After the combined fields, where parsers of it stop reading.
			line = append(line, " grpc-status="...)
			line = appendQuoted(line, []byte(f.grpcStatus))
		}
		line = append(line, '\n')
	}
	l.mu.Lock()
	l.w.Write(line)
	l.mu.Unlock()
	e.line = line[:0]
	l.pool.Put(e)
}

// run flushes the buffer every second until ctx ends, then once more.
func (l *accessLog) run(ctx context.Context) {
	if l == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.flush()
			return
		case <-t.C:
			l.flush()
		}
	}
}

func (l *accessLog) flush() {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.w.Flush()
	l.mu.Unlock()
}

func appendJSONField[S []byte | string](dst []byte, key string, v S) []byte {
	dst = append(dst, `,"`...)
	dst = append(dst, key...)
	dst = append(dst, `":"`...)
	dst = appendJSONString(dst, v)
	return append(dst, '"')
}

// appendJSONString escapes v for the inside of a JSON string. Invalid
// UTF-8 becomes U+FFFD, as encoding/json does.
func appendJSONString[S []byte | string](dst []byte, v S) []byte {
	for i := 0; i < len(v); {
		c := v[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(string(v[i:min(len(v), i+utf8.UTFMax)]))
		if r == utf8.RuneError && n == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, v[i:i+n]...)
		}
		i += n
	}
	return dst
}

// appendQuoted escapes v for a combined-format field between quotes, as
// nginx does: quotes, backslashes and bytes outside printable ASCII as \xHH.
func appendQuoted(dst, v []byte) []byte {
	for _, c := range v {
		if c == '"' || c == '\\' || c < 0x20 || c >= 0x7f {
			dst = append(dst, '\\', 'x', hexDigits[c>>4], hexDigits[c&0xf])
			continue
		}
		dst = append(dst, c)
	}
	return dst
}

func appendQuotedOrDash(dst, v []byte) []byte {
	if len(v) == 0 {
		return append(dst, '-')
	}
	return appendQuoted(dst, v)
}
