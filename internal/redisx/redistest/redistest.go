// Package redistest runs a throwaway redis-server for the tests of the
// plugins that use Redis: on a free port of 127.0.0.1, with no
// persistence, killed by its process id when the test ends. A test can
// kill it mid-way and start it again on the same port, to show that
// loopmx survives an outage and reconnects by itself.
//
// With LOOPMX_TEST_REDIS=cluster in the environment, Start runs a Redis
// Cluster of three masters instead, and WriteINI points redis.ini at it:
// the same tests then show that every plugin works on a cluster (make
// test runs the Redis-using packages both ways). Kill, Restart, Pause and
// Resume act on every node.
//
// By default every process runs on 127.0.0.1 of this machine. A test that
// builds a network of its own (network namespaces) says with a Place
// where each one runs and how the test reaches it (StartSentinelsAt).
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startTimeout bounds how long Start and Restart wait for PING to answer.
const startTimeout = 10 * time.Second

// Server is a redis-server process run by a test, or the three masters
// of a cluster.
type Server struct {
	// Addr is the server's host:port (of a cluster: its first node).
	Addr string
	// Cluster holds every node's address when the server is a cluster.
	Cluster []string

	t     testing.TB
	bin   string
	nodes []*node
}

// Place is where a Redis process of a test runs and how the test reaches
// it. The zero Place is 127.0.0.1 of this machine.
type Place struct {
	// Host is the address the process binds (default 127.0.0.1).
	Host string
	// Wrap is a command prefix that starts the process there, such as
	// "ip netns exec NAME"; it must exec the program, so that the process
	// id is redis-server's.
	Wrap []string
	// Dial connects the test to the process (default: a plain dial).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (p Place) host() string {
	if p.Host == "" {
		return "127.0.0.1"
	}
	return p.Host
}

// command is argv started at the place.
func (p Place) command(argv ...string) *exec.Cmd {
	argv = append(append([]string{}, p.Wrap...), argv...)
	return exec.Command(argv[0], argv[1:]...)
}

// dial connects to addr at the place within d.
func (p Place) dial(addr string, d time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if p.Dial != nil {
		return p.Dial(ctx, "tcp", addr)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", addr)
}

// options are a go-redis client's options for addr at the place.
func (p Place) options(addr string) *redis.Options {
	return &redis.Options{Addr: addr, Dialer: p.Dial}
}

// node is one redis-server process.
type node struct {
	addr  string
	dir   string
	place Place

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Start runs redis-server on a free port (or a cluster, see the package
// comment) and waits until it answers. The test is skipped, with a
// message saying so, when the redis-server binary is not installed; any
// other failure fails it. The servers are killed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	if os.Getenv("LOOPMX_TEST_REDIS") == "cluster" {
		return StartCluster(t)
	}
	s := newServer(t, 1, false, Place{})
	s.Restart()
	return s
}

// StartCluster runs a Redis Cluster of three masters, each with a third
// of the hash slots, and waits until the cluster is ready.
func StartCluster(t testing.TB) *Server {
	t.Helper()
	s := newServer(t, 3, true, Place{})
	s.Restart()
	ctx := context.Background()
	first := redis.NewClient(&redis.Options{Addr: s.nodes[0].addr})
	defer first.Close()
	for i, n := range s.nodes {
		c := redis.NewClient(&redis.Options{Addr: n.addr})
		lo, hi := i*16384/len(s.nodes), (i+1)*16384/len(s.nodes)-1
		if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			t.Fatalf("redistest: CLUSTER ADDSLOTSRANGE on %s: %v", n.addr, err)
		}
		c.Close()
		if i > 0 {
			host, port, _ := net.SplitHostPort(n.addr)
			if err := first.Do(ctx, "CLUSTER", "MEET", host, port).Err(); err != nil {
				t.Fatalf("redistest: CLUSTER MEET %s: %v", n.addr, err)
			}
		}
	}
	s.waitCluster()
	return s
}

func newServer(t testing.TB, n int, cluster bool, at Place) *Server {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (Debian package redis-server); skipping the tests against a real Redis")
	}
	s := &Server{t: t, bin: bin}
	for range n {
		// A port free on this machine's 127.0.0.1 is free in a network
		// namespace of the test's own too.
		nd := &node{addr: net.JoinHostPort(at.host(), strconv.Itoa(freePort(t))), dir: t.TempDir(), place: at}
		s.nodes = append(s.nodes, nd)
		if cluster {
			s.Cluster = append(s.Cluster, nd.addr)
		}
	}
	s.Addr = s.nodes[0].addr
	t.Cleanup(s.killAll)
	return s
}

// clusterTimeout bounds how long a cluster takes to agree that it is
// ready: the nodes learn of each other by gossip, slower than a PING on
// a loaded machine (10 s was seen to fall short).
const clusterTimeout = 60 * time.Second

// waitCluster waits until every node says the cluster is ok.
func (s *Server) waitCluster() {
	s.t.Helper()
	deadline := time.Now().Add(clusterTimeout)
	for _, n := range s.nodes {
		c := redis.NewClient(&redis.Options{Addr: n.addr})
		for {
			info, err := c.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				c.Close()
				s.t.Fatalf("redistest: the cluster is not ready on %s: %v\n%s", n.addr, err, info)
			}
			time.Sleep(20 * time.Millisecond)
		}
		c.Close()
	}
}

// freePort finds a port nobody listens on by letting the kernel pick one.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Restart starts the servers again on the same ports after Kill (or the
// first time, from Start) and waits until they answer PING (and, for a
// cluster, until it is ready again: the nodes keep their slots in their
// nodes.conf, not their keys).
func (s *Server) Restart() {
	s.t.Helper()
	for _, n := range s.nodes {
		_, port, _ := net.SplitHostPort(n.addr)
		// Without a password Redis only answers loopback clients unless
		// protected mode is off; a test's server is bound to one address
		// of the test's choosing.
		args := []string{s.bin, "--port", port, "--bind", n.place.host(), "--protected-mode", "no",
			"--save", "", "--appendonly", "no",
			"--dir", n.dir, "--logfile", filepath.Join(n.dir, "redis.log"),
			"--daemonize", "no"}
		if len(s.Cluster) > 0 {
			args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
				"--cluster-node-timeout", "2000")
		}
		cmd := n.place.command(args...)
		if err := cmd.Start(); err != nil {
			s.t.Fatalf("redistest: starting %s: %v", s.bin, err)
		}
		n.mu.Lock()
		n.cmd = cmd
		n.mu.Unlock()
	}
	deadline := time.Now().Add(startTimeout)
	for _, n := range s.nodes {
		for {
			err := n.ping()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(filepath.Join(n.dir, "redis.log"))
				s.t.Fatalf("redistest: redis-server on %s does not answer PING: %v\n%s", n.addr, err, log)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if len(s.Cluster) > 0 {
		if _, err := os.Stat(filepath.Join(s.nodes[0].dir, "nodes.conf")); err == nil {
			s.waitClusterIfFormed()
		}
	}
}

// waitClusterIfFormed waits for a restarted cluster; a cluster being
// formed for the first time has no slots yet, and StartCluster waits.
func (s *Server) waitClusterIfFormed() {
	c := redis.NewClient(&redis.Options{Addr: s.nodes[0].addr})
	defer c.Close()
	if info, err := c.ClusterInfo(context.Background()).Result(); err == nil && strings.Contains(info, "cluster_slots_assigned:16384") {
		s.waitCluster()
	}
}

// ping sends PING on a fresh connection and expects +PONG.
func (n *node) ping() error {
	c, err := n.place.dial(n.addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Kill kills the servers with SIGKILL, by their process ids, and waits
// for them to exit and for their ports to close. Killing a server that is
// not running does nothing.
//
// The outage tests (Kill, Pause) hold go-redis' single-server client to
// timings of its own; its cluster client retries and marks nodes as
// failing on another schedule. Under LOOPMX_TEST_REDIS=cluster they are
// skipped, with a message saying so.
func (s *Server) Kill() {
	s.singleOnly("kills Redis")
	s.killAll()
}

func (s *Server) killAll() {
	for _, n := range s.nodes {
		n.kill()
	}
}

// singleOnly skips an outage test on a cluster.
func (s *Server) singleOnly(what string) {
	if len(s.Cluster) > 0 && os.Getenv("LOOPMX_TEST_REDIS") == "cluster" {
		s.t.Skipf("redistest: this test %s and expects one server's failure timings; run it without LOOPMX_TEST_REDIS=cluster", what)
	}
}

func (n *node) kill() {
	n.mu.Lock()
	cmd := n.cmd
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
	for range 100 {
		c, err := n.place.dial(n.addr, 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
}

// Pause stops the servers with SIGSTOP, by their process ids: they keep
// their ports and connections but answer nothing, as a Redis that stalls
// (swapping, a long fork, a frozen VM). Resume ends the stall; Kill works
// on a paused server too.
func (s *Server) Pause() {
	s.singleOnly("stalls Redis")
	s.signal(syscall.SIGSTOP)
}

// Resume lets paused servers go on with SIGCONT.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

// signal sends sig to the running servers; the test fails when one is
// not running.
func (s *Server) signal(sig syscall.Signal) {
	s.t.Helper()
	for _, n := range s.nodes {
		n.mu.Lock()
		cmd := n.cmd
		n.mu.Unlock()
		if cmd == nil {
			s.t.Fatalf("redistest: %v to a server that is not running", sig)
		}
		if err := syscall.Kill(cmd.Process.Pid, sig); err != nil {
			s.t.Fatalf("redistest: %v to redis-server %d: %v", sig, cmd.Process.Pid, err)
		}
	}
}

// Client returns a go-redis client of the test's own (a cluster client
// for a cluster), closed when the test ends: for subscribing and for
// looking at keys.
func (s *Server) Client() redis.UniversalClient {
	var c redis.UniversalClient
	if len(s.Cluster) > 0 {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: s.Cluster})
	} else {
		c = redis.NewClient(s.nodes[0].place.options(s.Addr))
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// WriteINI writes a redis.ini pointing at the server (or the cluster)
// into dir, with the extra lines appended.
func (s *Server) WriteINI(dir string, extra ...string) {
	s.t.Helper()
	text := "server = " + s.Addr + "\n"
	if len(s.Cluster) > 0 {
		text = "cluster = " + strings.Join(s.Cluster, ", ") + "\n"
	}
	for _, l := range extra {
		text += l + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "redis.ini"), []byte(text), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// Sentinels is a Redis master, one replica and three Sentinels watching
// them under the master name "loopmx", all run by a test.
type Sentinels struct {
	// Master and Replica are the two data servers; after a failover the
	// replica is the master.
	Master, Replica *Server
	// Addrs are the Sentinels' addresses.
	Addrs []string

	t  testing.TB
	at Place // where the Sentinels run
}

// SentinelClient is a client of the Sentinel at addr (one of Addrs), for
// asking it SENTINEL commands; the caller closes it.
func (ss *Sentinels) SentinelClient(addr string) *redis.SentinelClient {
	return redis.NewSentinelClient(ss.at.options(addr))
}

// StartSentinels runs a master, a replica of it and three Sentinels with
// short failover times (down after 500 ms), and waits until every
// Sentinel knows the master and its replica.
func StartSentinels(t testing.TB) *Sentinels {
	t.Helper()
	return StartSentinelsAt(t, Place{}, Place{}, Place{})
}

// StartSentinelsAt is StartSentinels with the master, the replica and the
// three Sentinels each at a place of the test's choosing (the three
// Sentinels share one, on three ports).
func StartSentinelsAt(t testing.TB, master, replica, sentinels Place) *Sentinels {
	t.Helper()
	ss := &Sentinels{t: t, Master: newServer(t, 1, false, master), Replica: newServer(t, 1, false, replica), at: sentinels}
	ss.Master.Restart()
	ss.Replica.Restart()
	host, port, _ := net.SplitHostPort(ss.Master.Addr)
	ctx := context.Background()
	rc := redis.NewClient(replica.options(ss.Replica.Addr))
	defer rc.Close()
	if err := rc.Do(ctx, "REPLICAOF", host, port).Err(); err != nil {
		t.Fatalf("redistest: REPLICAOF: %v", err)
	}
	for range 3 {
		sn := &node{addr: net.JoinHostPort(sentinels.host(), strconv.Itoa(freePort(t))), dir: t.TempDir(), place: sentinels}
		_, sport, _ := net.SplitHostPort(sn.addr)
		conf := fmt.Sprintf("port %s\nbind %s\nprotected-mode no\ndir %s\nlogfile %s\n"+
			"sentinel monitor loopmx %s %s 2\n"+
			"sentinel down-after-milliseconds loopmx 500\n"+
			"sentinel failover-timeout loopmx 2000\n"+
			"sentinel parallel-syncs loopmx 1\n",
			sport, sentinels.host(), sn.dir, filepath.Join(sn.dir, "sentinel.log"), host, port)
		path := filepath.Join(sn.dir, "sentinel.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := sentinels.command(ss.Master.bin, path, "--sentinel")
		if err := cmd.Start(); err != nil {
			t.Fatalf("redistest: starting a sentinel: %v", err)
		}
		sn.cmd = cmd
		t.Cleanup(sn.kill)
		ss.Addrs = append(ss.Addrs, sn.addr)
	}
	// Every sentinel must see the replica before a failover can pick it.
	deadline := time.Now().Add(startTimeout)
	for _, a := range ss.Addrs {
		sc := ss.SentinelClient(a)
		for {
			reps, err := sc.Replicas(ctx, "loopmx").Result()
			if err == nil && len(reps) > 0 {
				break
			}
			if time.Now().After(deadline) {
				sc.Close()
				t.Fatalf("redistest: sentinel %s does not see the replica: %v %v", a, reps, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		sc.Close()
	}
	return ss
}

// WriteINI writes a redis.ini that names the Sentinels and the master
// name into dir, with the extra lines appended.
func (ss *Sentinels) WriteINI(dir string, extra ...string) {
	ss.t.Helper()
	text := "sentinels = " + strings.Join(ss.Addrs, ", ") + "\nmaster_name = loopmx\n"
	for _, l := range extra {
		text += l + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "redis.ini"), []byte(text), 0o644); err != nil {
		ss.t.Fatal(err)
	}
}
