//go:build linux

package dbinstance

import (
	"net"
	"strconv"
	"testing"
)

// TestFreePortReserves: the ports handed out lie below the ephemeral range
// (no outgoing connection can take one), are distinct, and are reserved
// against every other process (a second lock on a port's file, which is
// what another process would try, fails) and checked against listeners.
func TestFreePortReserves(t *testing.T) {
	low, err := ephemeralLow()
	if err != nil || low-portFloor < 1000 {
		t.Skipf("the ephemeral range leaves no room below it (low end %d, %v)", low, err)
	}
	seen := map[int]bool{}
	for range 50 {
		p, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		if p < portFloor || p >= low {
			t.Fatalf("port %d outside [%d, %d)", p, portFloor, low)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		f, err := reservePort(p)
		if err != nil {
			t.Fatal(err)
		}
		if f != nil {
			f.Close()
			t.Fatalf("port %d reserved a second time: another process could take it", p)
		}
	}

	// A port something listens on is not handed out, whatever its file.
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	reserved.Lock()
	reserved.files[p].Close() // as if the process that reserved it had exited
	delete(reserved.files, p)
	reserved.Unlock()
	f, err := reservePort(p)
	if err != nil {
		t.Fatal(err)
	}
	if f != nil {
		f.Close()
		t.Fatalf("port %d, on which something listens, was reserved", p)
	}
}
