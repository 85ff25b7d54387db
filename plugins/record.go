package plugins

import (
	"slices"
	"strconv"
	"strings"
)

// Outcome is the class of a finding: what a check concluded, whatever the
// plugin then did about it.
type Outcome uint8

// The outcomes. The zero Outcome is no valid outcome; Record keeps it as
// Err.
const (
	// Pass: the check was made and the client passed it.
	Pass Outcome = iota + 1
	// Fail: the check was made and the client failed it, whether or not
	// the plugin refused anything for it.
	Fail
	// Skip: the check did not apply (an address never looked up, a list
	// not configured).
	Skip
	// Err: the check could not be made (a timeout, a server down).
	Err
)

// String returns "pass", "fail", "skip" or "err" ("outcome(N)" for no
// valid outcome).
func (o Outcome) String() string {
	switch o {
	case Pass:
		return "pass"
	case Fail:
		return "fail"
	case Skip:
		return "skip"
	case Err:
		return "err"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// Finding is one result of one check of a plugin, as the results plugin
// logs and publishes it.
type Finding struct {
	// Plugin is the name of the plugin that made the check.
	Plugin string
	// Outcome is the class of the result.
	Outcome Outcome
	// Word is the check's own result word when it says more than the
	// outcome, in lower case: an SPF "softfail" or "neutral" (RFC 7208
	// 2.6), a "temperror". Empty when the outcome says it all.
	Word string
	// Message says what was found, for people: "listed by zen.example",
	// "bare IP address 192.0.2.1". It may be empty.
	Message string
}

// MaxFindings is how many findings a connection keeps for itself, and
// each transaction for itself; the ones recorded past it are only counted
// (a client may send HELO, or RCPT, as often as it likes).
const MaxFindings = 100

// Record records what a plugin found. A finding recorded while a
// transaction is open (c.Tx, from an accepted MAIL to the end of the
// transaction) belongs to the transaction; one recorded outside a
// transaction belongs to the connection. Findings accumulate in the order
// they were recorded; the results plugin reports them.
//
// The transaction begins when MAIL arrives, so the mail hooks' findings
// belong to the transaction they decide on; when MAIL is refused the
// transaction never began and its findings go to the connection
// (AbandonTx). A helo hook runs before the HELO it judges ends an open
// transaction, so its findings belong to that transaction.
//
// A finding recorded by a blocking hook that ran past its timeout is lost
// with the rest of that hook's view of the connection.
func (c *Conn) Record(f Finding) {
	switch f.Outcome {
	case Pass, Fail, Skip, Err:
	default:
		f.Message = strings.TrimSpace("no valid outcome (" + f.Outcome.String() + ") " + f.Message)
		f.Outcome = Err
	}
	f.Word = strings.ToLower(strings.TrimSpace(f.Word))
	if c.Tx != nil {
		c.Tx.findings, c.Tx.findingsDropped = appendFinding(c.Tx.findings, c.Tx.findingsDropped, f)
		return
	}
	c.findings, c.findingsDropped = appendFinding(c.findings, c.findingsDropped, f)
}

func appendFinding(list []Finding, dropped int, f Finding) ([]Finding, int) {
	if len(list) >= MaxFindings {
		return list, dropped + 1
	}
	return append(list, f), dropped
}

// Findings returns the connection's own findings, in the order they were
// recorded, and how many more were recorded past MaxFindings. The list is
// the connection's: do not change it.
func (c *Conn) Findings() (list []Finding, dropped int) { return c.findings, c.findingsDropped }

// Findings returns the transaction's own findings, in the order they were
// recorded, and how many more were recorded past MaxFindings. The list is
// the transaction's: do not change it.
func (t *Transaction) Findings() (list []Finding, dropped int) {
	return t.findings, t.findingsDropped
}

// cloneFindings gives n, a copy of c made by Clone (its transaction
// already copied), findings of its own.
func cloneFindings(n, c *Conn) {
	n.findings = slices.Clone(c.findings)
	if c.Tx != nil && n.Tx != nil {
		n.Tx.findings = slices.Clone(c.Tx.findings)
	}
}
