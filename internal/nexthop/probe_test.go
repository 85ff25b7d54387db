package nexthop

import (
	"bufio"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"loopmx/internal/nexthop/nexthoptest"
)

// probeSettings are the settings of a prober of host.
func probeSettings(hosts ...string) Settings {
	return Settings{
		Hosts: hosts, Helo: "mx.test",
		ConnectTimeout: time.Second, CommandTimeout: 5 * time.Second, DataTimeout: 5 * time.Second,
		IdleTimeout: time.Minute, PoolSize: 2, MaxMessages: 100, Budget: 10 * time.Second,
	}
}

// refuseNobody answers RCPT as a mail store that has no user "nobody".
func refuseNobody(to string) string {
	if strings.HasPrefix(to, "nobody@") {
		return "550 5.1.1 <" + to + ">: no such user"
	}
	return ""
}

func newProber(t *testing.T, s Settings) *Prober {
	p := NewProber("test/probe", SMTP, s)
	t.Cleanup(p.Close)
	return p
}

func probe(t *testing.T, p *Prober, rcpt string) ProbeResult {
	t.Helper()
	res, err := p.Probe(nil, "", rcpt, false, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatalf("probe <%s>: %v", rcpt, err)
	}
	return res
}

func TestProbePipelined(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{Rcpt: refuseNobody})
	p := newProber(t, probeSettings(be.Addr))
	if r := probe(t, p, "bob@example.com"); r.Mail.Code != 250 || r.Rcpt.Code != 250 || r.Host != be.Addr {
		t.Errorf("bob: %+v, want 250 to MAIL and RCPT from %s", r, be.Addr)
	}
	if r := probe(t, p, "nobody@example.com"); r.Rcpt.Code != 550 || r.Rcpt.Enhanced != "5.1.1" {
		t.Errorf("nobody: %+v, want the 550 5.1.1", r)
	}
	// One session; the probe is one write, the second starts with RSET
	// since the session was used before; no message was sent.
	if be.Conns() != 1 {
		t.Errorf("%d sessions, want the pooled one", be.Conns())
	}
	want := []string{"EHLO", "MAIL RCPT RSET", "RSET MAIL RCPT RSET"}
	if got := be.Groups(); !slices.Equal(got, want) {
		t.Errorf("the backend read %q, want %q", got, want)
	}
	if m := be.Messages(); len(m) != 0 {
		t.Errorf("a probe delivered %d messages", len(m))
	}
}

func TestProbeWithoutPipelining(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{Extensions: []string{"ENHANCEDSTATUSCODES"}, Rcpt: refuseNobody,
		Mail: func(from string) string {
			if from == "refused@example.net" {
				return "550 5.7.1 not from you"
			}
			return ""
		}})
	p := newProber(t, probeSettings(be.Addr))
	if r := probe(t, p, "nobody@example.com"); r.Rcpt.Code != 550 {
		t.Errorf("nobody: %+v, want 550", r)
	}
	res, err := p.Probe(nil, "refused@example.net", "bob@example.com", false, time.Now().Add(5*time.Second))
	if err != nil || res.Mail.Code != 550 || res.Rcpt.Code != 0 {
		t.Errorf("refused sender: %+v, %v; want MAIL's 550 and no RCPT reply", res, err)
	}
	want := []string{"EHLO", "MAIL", "RCPT", "RSET", "RSET", "MAIL", "RSET"}
	if got := be.Groups(); !slices.Equal(got, want) {
		t.Errorf("the backend read %q, want %q: one command at a time, no RCPT after a refused MAIL", got, want)
	}
}

// TestProbeSharesTheForwardersPool: a forwarder and a prober with the
// same settings use the same idle sessions.
func TestProbeSharesTheForwardersPool(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{})
	s := probeSettings(be.Addr)
	f := New("test/forward", SMTP, s)
	p := newProber(t, s)
	if f.pool != p.f.pool {
		t.Fatal("the forwarder and the prober of the same settings have pools of their own")
	}
	other := newProber(t, probeSettings(be.Addr, "127.0.0.1:1"))
	if other.f.pool == f.pool {
		t.Error("settings that differ share a pool")
	}
	probe(t, p, "bob@example.com")
	f.Close() // the prober still holds the pool: its session stays
	probe(t, p, "alice@example.com")
	if be.Conns() != 1 {
		t.Errorf("%d sessions, want one: closing the forwarder closed the prober's pool", be.Conns())
	}
}

// TestProbeStaleSession: a pooled session the next hop closed while it
// was idle is replaced, and the probe answers.
func TestProbeStaleSession(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{})
	p := newProber(t, probeSettings(be.Addr))
	probe(t, p, "bob@example.com")
	be.CloseConns()
	if r := probe(t, p, "bob@example.com"); r.Rcpt.Code != 250 {
		t.Errorf("after the backend closed the idle session: %+v", r)
	}
	if be.Conns() != 2 {
		t.Errorf("%d sessions, want 2", be.Conns())
	}
}

// TestProbeHostDown: the next host is tried; once every host failed
// three times in a row the prober is not ready, and a probe gives up at
// once.
func TestProbeHostDown(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{})
	down := nexthoptest.Start(t, nexthoptest.Options{})
	down.Stop()
	p := newProber(t, probeSettings(down.Addr, be.Addr))
	if r := probe(t, p, "bob@example.com"); r.Host != be.Addr {
		t.Errorf("answered by %s, want the second host", r.Host)
	}
	be.Stop()
	for range 3 {
		if _, err := p.Probe(nil, "", "bob@example.com", false, time.Now().Add(5*time.Second)); err == nil {
			t.Fatal("a probe with every host down answered")
		}
	}
	if p.Ready() {
		t.Error("the prober is ready with every host's breaker open")
	}
	_, err := p.Probe(nil, "", "bob@example.com", false, time.Now().Add(5*time.Second))
	if !strings.Contains(err.Error(), "circuit open") {
		t.Errorf("a probe while every breaker is open: %v", err)
	}
}

func TestProbeNeedsSMTPUTF8(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{Extensions: []string{"PIPELINING"}})
	p := newProber(t, probeSettings(be.Addr))
	_, err := p.Probe(nil, "", "jörg@example.com", true, time.Now().Add(5*time.Second))
	var fail *failure
	if !errors.As(err, &fail) || fail.kind != failNoUTF8 || !errors.Is(err, ErrNoSMTPUTF8) {
		t.Errorf("probe of a UTF-8 address without SMTPUTF8: %v", err)
	}
	if !p.Ready() {
		t.Error("a next hop without SMTPUTF8 is not down")
	}
}

// TestProbeAnswerBeforeHangUp: a next hop that answers RCPT and then
// closes the session before the RSET has answered; the session is not
// reused.
func TestProbeAnswerBeforeHangUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		br := bufio.NewReader(nc)
		io.WriteString(nc, "220 rude.test\r\n")
		for _, reply := range []string{"250 rude.test", "250 2.1.0 Ok", "550 5.1.1 no such user"} {
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
			io.WriteString(nc, reply+"\r\n")
		}
	}()
	p := newProber(t, probeSettings(ln.Addr().String()))
	if r := probe(t, p, "nobody@example.com"); r.Rcpt.Code != 550 {
		t.Errorf("%+v, want the 550 that came before the hang-up", r)
	}
	if c := p.f.pool.get(ln.Addr().String(), time.Now()); c != nil {
		t.Error("the session that hung up went back to the pool")
	}
}
