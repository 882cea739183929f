//go:build linux

package dbinstance

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// A throwaway server's ports are chosen before the server binds them, so
// something else may take one in between. Two things did: an outgoing
// connection of any process (the kernel picks their local ports from the
// same ephemeral range that a listen on port 0 draws from, and the suites
// open thousands), and a server of another test process that picked the
// same port at the same time. freePort rules out both: it picks from below
// the ephemeral range (ip_local_port_range), where the kernel never puts an
// outgoing connection, and reserves the port for the life of the process
// with an flock on a file of that port's number in portDir, which every
// test process using this package respects.

// portFloor is the lowest port handed out: below it lie the well-known and
// registered services a machine may run (the shared databases among them).
const portFloor = 20000

// portDir holds one lock file per reserved port. The files are never
// removed: removing one while a process holds its lock would let another
// process lock a new file of the same name.
var portDir = filepath.Join(os.TempDir(), "sqldlm-test-ports")

var reserved struct {
	sync.Mutex
	files map[int]*os.File // held open, and so locked, until the process exits
}

// freePort returns a port on 127.0.0.1 that no other process of this
// package has reserved, nothing listens on, and no outgoing connection can
// be given. Where the ephemeral range leaves too little room below it, or
// the reservation files cannot be made, it falls back to a port the kernel
// picks (free now, not reserved).
func freePort() (int, error) {
	low, err := ephemeralLow()
	if err != nil || low-portFloor < 1000 {
		return kernelPort()
	}
	if err := os.MkdirAll(portDir, 0o777); err != nil {
		return kernelPort() // no reservations here: the old way
	}
	// Any user's test processes reserve ports here (the sticky bit keeps
	// them from removing each other's files).
	_ = os.Chmod(portDir, 0o777|os.ModeSticky)
	reserved.Lock()
	defer reserved.Unlock()
	if reserved.files == nil {
		reserved.files = map[int]*os.File{}
	}
	for range 1000 {
		p := portFloor + rand.IntN(low-portFloor)
		if _, mine := reserved.files[p]; mine {
			continue
		}
		f, err := reservePort(p)
		if err != nil {
			return kernelPort() // the reservation files cannot be opened: the old way
		}
		if f == nil {
			continue // another process holds it, or something listens there
		}
		reserved.files[p] = f
		return p, nil
	}
	return 0, fmt.Errorf("no free port in [%d, %d) after 1000 tries", portFloor, low)
}

// reservePort locks port p's file and checks that p can be bound. It
// returns the locked file, or nil if p is taken.
func reservePort(p int) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(portDir, strconv.Itoa(p)), os.O_CREATE|os.O_RDONLY, 0o444)
	if err != nil {
		return nil, fmt.Errorf("port reservations: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		f.Close() // closing the file releases the lock
		return nil, nil
	}
	l.Close()
	return f, nil
}

// ephemeralLow reads the low end of the kernel's range for the local ports
// of outgoing connections.
func ephemeralLow() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return 0, fmt.Errorf("ip_local_port_range: %q", b)
	}
	return strconv.Atoi(fields[0])
}

func kernelPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
