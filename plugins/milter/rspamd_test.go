package milter_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"loopmx/internal/rspamdtest"
	"loopmx/internal/servertest"
)

// rspamd's proxy worker in milter mode, a real milter started by the
// test: it refuses GTUBE (its reply is the client's), and the fields it
// adds to a clean message are in the stored message.
func TestRspamdProxyAsMilter(t *testing.T) {
	rs := rspamdtest.Start(t)
	deadline := time.Now().Add(rspamdtest.StartTimeout)
	for {
		c, err := net.DialTimeout("tcp", rs.Milter, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rspamd's proxy worker does not listen on %s: %v\n%s", rs.Milter, err, rs.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	srv, spool := start(t, "timeout = 90s\nmilters = rspamd\n[rspamd]\nsocket = "+rs.Milter+"\nmessage_timeout = 60s\n")
	gtube := "From: spammer@example.org\r\nTo: user@example.com\r\nSubject: offer\r\n\r\n" +
		"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"
	if r := servertest.Deliver(t, srv.Addr, servertest.Plain("spammer@example.org", "user@example.com"), gtube); r.Code/100 != 5 {
		t.Fatalf("GTUBE through rspamd's milter got %s, want a refusal\n%s", r, srv.Log)
	} else if !strings.Contains(strings.ToLower(r.String()), "gtube") {
		t.Errorf("the refusal does not carry rspamd's reason: %s", r)
	}
	if r := servertest.Deliver(t, srv.Addr, env, msg); r.Code != 250 {
		t.Fatalf("a clean message got %s, want 250\n%s", r, srv.Log)
	}
	msgs := servertest.Stored(t, spool)
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored, want the clean one", len(msgs))
	}
	if h := header(msgs[0]); !strings.Contains(h, "X-Spamd-Result:") && !strings.Contains(h, "X-Rspamd-") {
		t.Errorf("the stored message lacks the fields rspamd's milter adds:\n%s", h)
	}
}
