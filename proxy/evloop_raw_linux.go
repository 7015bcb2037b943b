//go:build linux

package proxy

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loop's system calls on its own non-blocking sockets and its
// epoll set (with a zero timeout), made without telling the Go scheduler
// (RawSyscall): none of them can block. The scheduler's bookkeeping for a
// system call (entersyscall) costs more than a small read on loopback,
// and it wakes the runtime's sysmon thread whenever that had gone to
// sleep for want of work, which it does between requests at a moderate
// rate: sysmon then polls every 20 µs for a while, a nanosleep each time
// (perf showed those sleeps at a tenth of the proxy's CPU at 5,000 req/s).
// What may wait (the loop's wait for events, a goroutine's read under a
// deadline) keeps going through the scheduler.

var zeroBuf uintptr // a valid address for a read or write of no bytes

func loopRead(fd int, p []byte) (int, error)  { return loopIO(unix.SYS_READ, fd, p) }
func loopWrite(fd int, p []byte) (int, error) { return loopIO(unix.SYS_WRITE, fd, p) }

// loopIO is a read or a write (trap) of p on fd.
func loopIO(trap uintptr, fd int, p []byte) (int, error) {
	ptr := uintptr(unsafe.Pointer(&zeroBuf))
	if len(p) > 0 {
		ptr = uintptr(unsafe.Pointer(&p[0]))
	}
	for {
		n, _, e := syscall.RawSyscall(trap, uintptr(fd), ptr, uintptr(len(p)))
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return -1, e
	}
}

// loopEpollPoll reports the events ready in the set epfd, without a wait.
func loopEpollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	for {
		n, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}
