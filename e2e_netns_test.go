//go:build linux

package main

// End-to-end test of docs/scale-out.md's second shape as it stands on
// separate machines, built in network namespaces on this one: a client, a
// real HAProxy, three loopmx hosts and a Redis master with a replica and
// three Sentinels, each in a namespace of its own, wired to one bridge.
// Under load, one loopmx host and then the Redis master are killed with
// SIGKILL.

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"loopmx/internal/netnstest"
	"loopmx/internal/redisx/redistest"
)

// The network: 10.77.0.0/24 on the bridge. The client namespace has one
// address for each load client and for each try of the limit check, so
// each counts alone in limit's per-address concurrency.
const (
	netnsFront    = "10.77.0.2:25" // HAProxy
	netnsClient   = "10.77.0.10"   // the client's own checks
	netnsLoadBase = 101            // load client c sends from 10.77.0.(101+c)
	netnsTryBase  = 11             // try i of the limit check from 10.77.0.(11+i)
	netnsTries    = 8
)

// nsDial dials from the namespace ns, from the address from ("": the
// kernel's choice).
func nsDial(ns *netnstest.NS, from string) dialer {
	return func(addr string, timeout time.Duration) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return ns.DialFrom(ctx, from, "tcp", addr)
	}
}

// redisPlace runs a Redis process in ns, on its first address.
func redisPlace(ns *netnstest.NS) redistest.Place {
	return redistest.Place{Host: ns.Addrs[0], Wrap: ns.Wrap(), Dial: ns.DialContext}
}

// TestE2ENetnsFailover: under a bounded load from the client namespace
// through HAProxy (send-proxy-v2, leastconn, /readyz checks) to three
// loopmx hosts that share limit's counters through a Sentinel-managed
// Redis, host mx2 is killed (with a session surely open on it), then the
// Redis master. Every message that got a 250 is in exactly one host's
// spool; only sessions open on mx2 or before any banner failed, the held
// one among them; the Sentinels promoted the replica; and,
// after the failover and without a restart, the two surviving hosts
// enforce one per-address concurrency limit between them through the new
// master.
func TestE2ENetnsFailover(t *testing.T) {
	hpBin := haproxyBinary(t)
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed (make deps installs it as root: apt-get install redis-server)")
	}
	// Every namespace first (New skips the test unless this machine can
	// make them): their cleanups then run after those of the processes
	// started in them.
	lan := netnstest.New(t)
	bin := loopmxBinary(t)
	clientAddrs := []string{netnsClient + "/24"}
	for i := range 6 {
		clientAddrs = append(clientAddrs, fmt.Sprintf("10.77.0.%d/24", netnsLoadBase+i))
	}
	for i := range netnsTries {
		clientAddrs = append(clientAddrs, fmt.Sprintf("10.77.0.%d/24", netnsTryBase+i))
	}
	client := lan.Add("client", clientAddrs...)
	hp := lan.Add("haproxy", "10.77.0.2/24")
	redisM := lan.Add("redis-m", "10.77.0.31/24")
	redisR := lan.Add("redis-r", "10.77.0.32/24")
	sentinels := lan.Add("sentinel", "10.77.0.41/24")
	var mxNS []*netnstest.NS
	for i := 1; i <= 3; i++ {
		mxNS = append(mxNS, lan.Add(fmt.Sprintf("mx%d", i), fmt.Sprintf("10.77.0.2%d/24", i)))
	}

	ss := redistest.StartSentinelsAt(t, redisPlace(redisM), redisPlace(redisR), redisPlace(sentinels))

	// Three hosts, each with its own spool and name, limit in Redis mode
	// through the Sentinels. fail = open lets mail through while Redis
	// fails over; breaker_backoff_max keeps the wait for the new master
	// within seconds.
	const maxConc = 4
	type host struct {
		srv   *server
		spool string
		name  string
		addr  string
	}
	var hosts []host
	var spools []string
	var backend strings.Builder
	backend.WriteString("    option httpchk GET /readyz\n    http-check expect status 200\n" +
		"    default-server send-proxy-v2 check port 9100 inter 100ms fall 2 rise 2\n")
	for i, ns := range mxNS {
		spool := t.TempDir()
		dir := maildirConfig(t, spool)
		addr, name := ns.Addrs[0], fmt.Sprintf("mx%d.test", i+1)
		writeFiles(t, dir, map[string]string{
			"plugins":   "limit\nrcpt_to.in_host_list\nqueue/maildir\n",
			"limit.ini": fmt.Sprintf("fail = open\nmax_concurrency = %d\n", maxConc),
			"smtp.ini": "listen = 127.0.0.1:2525\nproxy_listen = " + addr + ":2526\nproxy_trusted = 10.77.0.2/32\n" +
				"metrics_listen = " + addr + ":9100\nme = " + name + "\n",
		})
		ss.WriteINI(dir, "breaker_backoff_max = 2s")
		// Ready once the health check HAProxy will make reaches /readyz.
		srv, err := launchVia(t, append(ns.Wrap(), bin, "-c", dir), dir, addr+":9100", nsDial(hp, ""))
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, host{srv: srv, spool: spool, name: name, addr: addr})
		spools = append(spools, spool)
		fmt.Fprintf(&backend, "    server mx%d %s:2526\n", i+1, addr)
	}
	startHAProxy(t, hpBin, hp.Wrap(), netnsFront, backend.String(), nsDial(client, netnsClient))

	// The load: 6 clients, each from its own address, at most 50 sessions
	// a second in all. mx2 is killed once 60 messages are in, the Redis
	// master 60 messages later; the load goes on until 60 more are in
	// after the Sentinels name the new master.
	pace := time.NewTicker(20 * time.Millisecond)
	t.Cleanup(pace.Stop)
	load := startLoad(t, 6, 1500, "nn", netnsFront, func(c int) dialer {
		return nsDial(client, fmt.Sprintf("10.77.0.%d", netnsLoadBase+c))
	}, pace.C)
	step := func(n int64, what string) {
		t.Helper()
		if !load.waitAccepted(n, 30*time.Second) {
			t.Fatalf("%s: %d messages accepted, not %d, within 30 s", what, load.accepted.Load(), n)
		}
	}
	step(60, "before killing mx2")
	killed := hosts[1]
	// One session surely open on mx2 when it dies, in the middle of its
	// transaction: its message must fail, and be nowhere.
	held := openOn(t, nsDial(client, netnsClient), killed.name)
	killed.srv.kill9()
	step(120, "after killing mx2")
	oldMaster := ss.Master.Addr
	ss.Master.Kill()
	newMaster := waitNewMaster(t, ss, oldMaster)
	step(load.accepted.Load()+60, "after the failover")
	load.stop()
	sessions := append(load.wait(), held.finish("nn-held"))

	if last := sessions[len(sessions)-1]; last.err == nil {
		t.Errorf("the session held open on %s when it was killed got a 250 for its message afterwards", killed.name)
	}
	perHost, failed := checkSpread(t, sessions, spools, killed.name)
	for _, h := range hosts {
		if perHost[h.name] == 0 {
			t.Errorf("delivered per host %v: the balancer did not use %s", perHost, h.name)
		}
		if h.name != killed.name && !h.srv.alive() {
			t.Errorf("%s exited during the run: %v", h.name, h.srv.state)
		}
	}
	if newMaster != ss.Replica.Addr {
		t.Errorf("the Sentinels name %s as the master, not the replica %s", newMaster, ss.Replica.Addr)
	}

	// The limit, after the failover: from an address of its own, the client
	// opens maxConc sessions and holds them, then one more. leastconn
	// spreads them over mx1 and mx3, so neither host alone holds maxConc:
	// the last is refused only if both count in the new master.
	//
	// A host whose circuit breaker is still open from the outage lets a
	// session in without counting it (fail = open), so the check is tried
	// again, each time from a fresh address, after the members of the
	// try's closed sessions are gone from the new master: a host removes
	// them once it reaches Redis again.
	newRedis := ss.Replica.Client()
	// A host reaches the new master only when a session makes it call
	// Redis, and its last sessions may have come while its breaker was
	// open: sessions through the balancer (leastconn takes turns between
	// idle hosts) give both hosts calls to make meanwhile.
	poke := func() {
		if cl, _, _, _, err := greet(nsDial(client, netnsClient), netnsFront); err == nil {
			cl.cmd("QUIT")
			cl.Close()
		}
	}
	waitRedisClients(t, newRedis, poke, hosts[0].addr, hosts[2].addr)
	var tries []string
	ok := false
	for i := 0; i < netnsTries && !ok; i++ {
		from := fmt.Sprintf("10.77.0.%d", netnsTryBase+i)
		key := "limit:open:{" + from + "}"
		count := func() int64 { return newRedis.ZCard(context.Background(), key).Val() }
		var note string
		ok, note = overConcurrency(nsDial(client, from), maxConc, count)
		tries = append(tries, from+": "+note)
		deadline := time.Now().Add(15 * time.Second)
		for count() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s still counts %d open connections 15 s after they closed:\n%s", key, count(), strings.Join(tries, "\n"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if !ok {
		t.Errorf("the concurrency limit was not enforced across mx1 and mx3 after the failover:\n%s", strings.Join(tries, "\n"))
	}
	t.Logf("%d sessions: delivered per host %v, %d failed (all on %s or before a banner); new master %s (was %s); limit check: %s",
		len(sessions), perHost, failed, killed.name, newMaster, oldMaster, strings.Join(tries, "; "))
}

// openSession is a session held open in the middle of a transaction.
type openSession struct {
	cl   *smtpClient
	host string
}

// openOn opens sessions through the balancer with dial until one lands on
// the host named host (leastconn picks the least busy host, so a few
// tries do), and holds it after RCPT. The others are closed.
func openOn(t *testing.T, dial dialer, host string) *openSession {
	t.Helper()
	for range 30 {
		cl, code, text, got, err := greet(dial, netnsFront)
		if err != nil || code != 220 {
			t.Fatalf("a session through the balancer: %d %s %v", code, text, err)
		}
		if got == host {
			if err := cl.startTx(true, "u@example.com"); err != nil {
				t.Fatalf("a transaction on %s: %v", host, err)
			}
			t.Cleanup(func() { cl.Close() })
			return &openSession{cl: cl, host: host}
		}
		cl.cmd("QUIT")
		cl.Close()
	}
	t.Fatalf("30 sessions through the balancer, none on %s", host)
	return nil
}

// finish sends the held transaction's message with Message-ID id, and
// reports the session as the load does.
func (o *openSession) finish(id string) hostSession {
	s := hostSession{host: o.host}
	code, text, err := o.cl.sendData(testMessage(id, 1024))
	if err != nil || code != 250 {
		s.err = fmt.Errorf("DATA: %d %s %v", code, text, err)
		return s
	}
	s.id = id
	return s
}

// waitNewMaster waits until a Sentinel names a master other than old, and
// returns it.
func waitNewMaster(t *testing.T, ss *redistest.Sentinels, old string) string {
	t.Helper()
	sc := ss.SentinelClient(ss.Addrs[0])
	defer sc.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := sc.GetMasterAddrByName(context.Background(), "loopmx").Result()
		if err == nil && len(got) == 2 {
			if a := net.JoinHostPort(got[0], got[1]); a != old {
				return a
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Sentinels still name %v (%v) as the master 30 s after %s was killed", got, err, old)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitRedisClients waits until the Redis server of c has a client
// connection from each of the addresses: the host there has found the
// new master through the Sentinels. poke runs while one is missing.
func waitRedisClients(t *testing.T, c redis.UniversalClient, poke func(), addrs ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := c.ClientList(context.Background()).Result()
		missing := []string{}
		for _, a := range addrs {
			if !strings.Contains(list, " addr="+a+":") {
				missing = append(missing, a)
			}
		}
		if err == nil && len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after the failover, no connection from %v to the new master (%v):\n%s", missing, err, list)
		}
		poke()
		time.Sleep(50 * time.Millisecond)
	}
}

// overConcurrency opens max sessions through the balancer with dial and
// holds them, then one more. It reports whether the max were let in, on
// more than one host, with count (the connections Redis holds open for
// the address) at max while they were open, and the one more got limit's
// concurrency refusal; note says what happened.
func overConcurrency(dial dialer, max int, count func() int64) (ok bool, note string) {
	var held []*smtpClient
	defer func() {
		for _, cl := range held {
			cl.cmd("QUIT")
			cl.Close()
		}
	}()
	hosts := map[string]int{}
	for i := 1; i <= max; i++ {
		cl, code, text, host, err := greet(dial, netnsFront)
		if err != nil {
			return false, fmt.Sprintf("session %d: %v", i, err)
		}
		held = append(held, cl)
		if code != 220 {
			return false, fmt.Sprintf("session %d: %d %s", i, code, text)
		}
		hosts[host]++
	}
	n := count()
	cl, code, text, _, err := greet(dial, netnsFront)
	if err != nil {
		return false, fmt.Sprintf("%d sessions let in %v, %d counted in Redis; session %d: %v", max, hosts, n, max+1, err)
	}
	held = append(held, cl)
	note = fmt.Sprintf("%d sessions let in %v, %d counted in Redis; session %d: %d %s", max, hosts, n, max+1, code, text)
	ok = len(hosts) > 1 && n == int64(max) && code == 421 && strings.HasPrefix(text, "4.7.0 Too many concurrent connections")
	return ok, note
}
