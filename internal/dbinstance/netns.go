//go:build linux

package dbinstance

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// A network of its own for a Galera cluster whose nodes must be partitioned
// from each other: each node runs in a network namespace with one veth
// interface on a bridge in the host's namespace, which has the subnet's
// first address. Clients (the test process) reach every node from the
// host's namespace through the bridge; the nodes reach each other through
// it too. Isolate cuts one node off from the other nodes with blackhole
// routes on both sides (packets are dropped silently, as by a real
// partition) while the host still reaches it, so that its clients see what
// a minority node does.
//
// Names: namespaces "sqldlm-<pid>-<n>-<node>", bridge "sqb<pid>c<n>", host
// veths "sqv<pid>c<n>n<node>" (interface names have at most 15 bytes). A
// namespace whose test process is gone is removed by the next process that
// builds one.
type topology struct {
	bridge string
	hosts  []string // each node's address
	netns  []string // each node's namespace

	mu      sync.Mutex
	blocked map[[2]int]bool // node pairs with blackhole routes (both directions)
}

// netnsClients is the account host pattern of clients of nodes in network
// namespaces: they connect from the bridge's address.
const netnsClients = "10.231.%"

// topologies counts the topologies this process made, for unique names.
var topologies atomic.Int32

// netnsUnavailable says why network namespaces cannot be used here, or "".
func netnsUnavailable() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root"
	}
	if ipBin() == "" {
		return "the ip command is not installed (apt-get install iproute2)"
	}
	name := "sqldlm-probe-" + strconv.Itoa(os.Getpid())
	if err := ip("netns", "add", name); err != nil {
		return "cannot create a network namespace: " + err.Error()
	}
	_ = ip("netns", "del", name)
	return ""
}

// ipBin returns the path of iproute2's ip, also when PATH lacks /usr/sbin,
// or "".
func ipBin() string {
	p, _ := lookPath("ip", "/usr/sbin/ip")
	return p
}

func ip(args ...string) error {
	out, err := exec.Command(ipBin(), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newTopology builds the namespaces, veths and bridge for n nodes on a free
// 10.231.x.0/24 subnet; t.Cleanup removes them (after the nodes, which are
// killed by cleanups registered later).
func newTopology(t testing.TB, n int) (*topology, error) {
	sweepNetns()
	id := topologies.Add(1)
	pid := os.Getpid()
	subnet, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	tp := &topology{bridge: fmt.Sprintf("sqb%dc%d", pid, id), blocked: map[[2]int]bool{}}
	t.Cleanup(tp.remove)
	steps := [][]string{
		{"link", "add", tp.bridge, "type", "bridge"},
		{"addr", "add", subnet + "1/24", "dev", tp.bridge},
		{"link", "set", tp.bridge, "up"},
	}
	for k := range n {
		ns := fmt.Sprintf("sqldlm-%d-%d-%d", pid, id, k)
		veth := fmt.Sprintf("sqv%dc%dn%d", pid, id, k)
		host := subnet + strconv.Itoa(11+k)
		tp.netns = append(tp.netns, ns)
		tp.hosts = append(tp.hosts, host)
		steps = append(steps,
			[]string{"netns", "add", ns},
			[]string{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"link", "set", veth, "master", tp.bridge, "up"},
			[]string{"-n", ns, "addr", "add", host + "/24", "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
			[]string{"-n", ns, "link", "set", "lo", "up"})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, err
		}
	}
	return tp, nil
}

// freeSubnet returns "10.231.x." for the first x no interface here uses.
func freeSubnet() (string, error) {
	out, err := exec.Command(ipBin(), "-o", "-4", "addr").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip addr: %v: %s", err, out)
	}
	for x := 1; x < 255; x++ {
		prefix := "10.231." + strconv.Itoa(x) + "."
		if !strings.Contains(string(out), " "+prefix) {
			return prefix, nil
		}
	}
	return "", errors.New("no free 10.231.x.0/24 subnet")
}

func (tp *topology) remove() {
	for _, ns := range tp.netns {
		_ = ip("netns", "del", ns) // its veth goes with it
	}
	_ = ip("link", "del", tp.bridge)
}

// sweepNetns removes the namespaces and bridges of test processes that are
// gone (killed before their cleanup ran).
func sweepNetns() {
	out, err := exec.Command(ipBin(), "netns", "list").Output()
	if err != nil {
		return
	}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		parts := strings.Split(f[0], "-")
		if len(parts) != 4 || parts[0] != "sqldlm" {
			continue
		}
		pid, err := strconv.Atoi(parts[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + parts[1]); err == nil {
			continue // its process lives
		}
		_ = ip("netns", "del", f[0])
		_ = ip("link", "del", "sqb"+parts[1]+"c"+parts[2])
	}
}

// route adds (add) or deletes a blackhole route to node to in node from's
// namespace.
func (tp *topology) route(verb string, from, to int) error {
	return ip("-n", tp.netns[from], "route", verb, "blackhole", tp.hosts[to]+"/32")
}

// isolate cuts node k off from every other node, both ways.
func (tp *topology) isolate(k int) error {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for j := range tp.netns {
		if j == k || tp.blocked[pair(j, k)] {
			continue
		}
		if err := tp.route("add", k, j); err != nil {
			return err
		}
		if err := tp.route("add", j, k); err != nil {
			return err
		}
		tp.blocked[pair(j, k)] = true
	}
	return nil
}

// heal removes every blackhole route.
func (tp *topology) heal() error {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var errs []error
	for p := range tp.blocked {
		errs = append(errs, tp.route("del", p[0], p[1]), tp.route("del", p[1], p[0]))
		delete(tp.blocked, p)
	}
	return errors.Join(errs...)
}

func pair(a, b int) [2]int { return [2]int{min(a, b), max(a, b)} }

// startIn starts cmd in the network namespace netns ("" for this process's
// own): the calling goroutine's thread enters the namespace, forks the
// command (which inherits the thread's namespace) and goes back.
func startIn(netns string, cmd *exec.Cmd) error {
	if netns == "" {
		return cmd.Start()
	}
	target, err := os.Open("/run/netns/" + netns)
	if err != nil {
		return err
	}
	defer target.Close()
	runtime.LockOSThread()
	own, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer own.Close()
	if err := setns(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", netns, err)
	}
	startErr := cmd.Start()
	if err := setns(own); err != nil {
		// The thread stays locked and ends with the goroutine; a thread
		// in the wrong namespace never runs other goroutines.
		return errors.Join(startErr, fmt.Errorf("leave network namespace %s: %w", netns, err))
	}
	runtime.UnlockOSThread()
	return startErr
}

func setns(f *os.File) error { return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET) }
