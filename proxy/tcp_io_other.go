//go:build !linux

package proxy

import "net"

// sockIO reads and writes one side of a TCP route's connection.
type sockIO struct{ c net.Conn }

func (s *sockIO) init(c net.Conn)             { s.c = c }
func (s *sockIO) Read(b []byte) (int, error)  { return s.c.Read(b) }
func (s *sockIO) Write(b []byte) (int, error) { return s.c.Write(b) }
func (s *sockIO) closeWrite()                 { closeWrite(s.c) }
func (s *sockIO) close()                      { s.c.Close() }
