package plugins

import (
	"reflect"
	"testing"
	"time"
)

func TestRecordScope(t *testing.T) {
	c := &Conn{ID: "w1.1"}
	c.Record(Finding{Plugin: "dnsbl", Outcome: Pass, Message: "not listed"})
	tx := c.BeginTx("s@example.org", time.Now())
	c.Record(Finding{Plugin: "spf", Outcome: Fail, Word: " SoftFail ", Message: "not designated"})
	c.EndTx()
	c.Record(Finding{Plugin: "limit", Outcome: 0, Message: "forgot the outcome"})

	conn, dropped := c.Findings()
	want := []Finding{
		{Plugin: "dnsbl", Outcome: Pass, Message: "not listed"},
		{Plugin: "limit", Outcome: Err, Message: "no valid outcome (outcome(0)) forgot the outcome"},
	}
	if !reflect.DeepEqual(conn, want) || dropped != 0 {
		t.Errorf("connection findings %+v (%d dropped)\nwant %+v", conn, dropped, want)
	}
	got, _ := tx.Findings()
	if want := []Finding{{Plugin: "spf", Outcome: Fail, Word: "softfail", Message: "not designated"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("transaction findings %+v\nwant %+v", got, want)
	}
}

// TestRecordBounded: a client that sends HELO after HELO cannot make a
// connection keep findings without end.
func TestRecordBounded(t *testing.T) {
	c := &Conn{ID: "w1.1"}
	for range MaxFindings + 7 {
		c.Record(Finding{Plugin: "helo.checks", Outcome: Pass})
	}
	if list, dropped := c.Findings(); len(list) != MaxFindings || dropped != 7 {
		t.Errorf("%d findings kept and %d dropped, want %d and 7", len(list), dropped, MaxFindings)
	}
}

// TestCloneKeepsFindingsApart: after a hook timed out, the late hook and
// the connection each record into their own copy.
func TestCloneKeepsFindingsApart(t *testing.T) {
	c := &Conn{ID: "w1.1"}
	for range 3 { // a list with room to grow in place
		c.Record(Finding{Plugin: "a", Outcome: Pass})
	}
	c.BeginTx("", time.Now())
	for range 3 {
		c.Record(Finding{Plugin: "b", Outcome: Pass})
	}
	n := c.Clone()
	c.Record(Finding{Plugin: "late", Outcome: Fail})
	lateTx := c.Tx
	c.EndTx()
	c.Record(Finding{Plugin: "late", Outcome: Fail})
	n.Record(Finding{Plugin: "live", Outcome: Pass})

	if l, _ := n.Tx.Findings(); len(l) != 4 || l[3].Plugin != "live" {
		t.Errorf("the copy's transaction has %+v", l)
	}
	if l, _ := n.Findings(); len(l) != 3 {
		t.Errorf("the copy's connection has %+v", l)
	}
	if l, _ := lateTx.Findings(); len(l) != 4 || l[3].Plugin != "late" {
		t.Errorf("the original transaction has %+v", l)
	}
	if l, _ := c.Findings(); len(l) != 4 || l[3].Plugin != "late" {
		t.Errorf("the original connection has %+v", l)
	}
}
