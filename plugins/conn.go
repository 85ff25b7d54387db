package plugins

import (
	"crypto/tls"
	"net/netip"
	"sort"
	"strconv"
	"time"

	"github.com/rs/zerolog"
)

// Conn is what a plugin sees of a connection. The host fills it; plugins
// read it and may use Notes. While a hook runs, the connection does nothing
// else, so hooks may touch Conn without locks.
type Conn struct {
	// ID names the connection in logs ("<process>.<n>").
	ID string
	// RemoteIP and RemotePort are the client's address.
	RemoteIP   netip.Addr
	RemotePort uint16
	// LocalIP and LocalPort are the address the client connected to.
	LocalIP   netip.Addr
	LocalPort uint16
	// Hostname is the server's `me`.
	Hostname string
	// Helo is the accepted HELO/EHLO name. The host sets it once a helo or
	// ehlo hook accepted, and clears it when TLS starts (RFC 3207 4.2).
	Helo string
	// Tx is the transaction, nil outside one.
	Tx *Transaction
	// Log is the connection's logger.
	Log *zerolog.Logger
	// Started is when the connection was accepted.
	Started time.Time
	// LoadSource reports the server's load (see Load); set by the host.
	LoadSource LoadReporter
	// TLS is the TLS state after STARTTLS or on an implicit-TLS listener
	// (protocol, cipher, client certificates); nil on a plain connection.
	TLS *tls.ConnectionState
	// EarlyTalker is set by the host when the client sent data before the
	// banner was written (only meaningful while a connect hook delays it).
	EarlyTalker bool
	// Timer, set by the host when it measures hooks, hears how long each
	// inline hook took (Chain.Step); nil measures nothing.
	Timer HookTimer

	notes map[string]any
	txN   int

	// findings are the connection's results (record.go).
	findings        []Finding
	findingsDropped int
}

// StartedTLS records a finished TLS handshake: the client must greet
// again (RFC 3207 4.2), so the HELO name is forgotten.
func (c *Conn) StartedTLS(st *tls.ConnectionState) {
	c.TLS = st
	c.Helo = ""
}

// Transaction is the mail transaction a plugin sees. It is the one record
// of the envelope: the host adds the sender and each recipient as the
// hooks accept them.
type Transaction struct {
	// ID is "<connection id>.<n>", the queue id given in the 250 reply.
	ID string
	// From is the reverse path ("" for <>); Rcpts the accepted recipients.
	From  string
	Rcpts []string
	// SMTPUTF8 tells that MAIL carried SMTPUTF8.
	SMTPUTF8 bool
	// Started is when MAIL was accepted.
	Started time.Time

	notes map[string]any

	// findings are the transaction's results (record.go).
	findings        []Finding
	findingsDropped int
}

// Note returns a connection-scoped note.
func (c *Conn) Note(key string) any { return c.notes[key] }

// SetNote sets a connection-scoped note.
func (c *Conn) SetNote(key string, v any) {
	if c.notes == nil {
		c.notes = make(map[string]any, 4)
	}
	c.notes[key] = v
}

// Note returns a transaction-scoped note.
func (t *Transaction) Note(key string) any { return t.notes[key] }

// SetNote sets a transaction-scoped note.
func (t *Transaction) SetNote(key string, v any) {
	if t.notes == nil {
		t.notes = make(map[string]any, 4)
	}
	t.notes[key] = v
}

// BeginTx starts a transaction for the sender from.
func (c *Conn) BeginTx(from string, now time.Time) *Transaction {
	return c.BeginTxIn(new(Transaction), from, now)
}

// BeginTxIn is BeginTx in the memory of an ended transaction, t, which it
// overwrites. The host passes memory that no hook can still hold: one that
// only inline hooks saw (they keep nothing past their return; see "What a
// hook may keep" in docs/plugins.md).
func (c *Conn) BeginTxIn(t *Transaction, from string, now time.Time) *Transaction {
	c.txN++
	*t = Transaction{ID: c.ID + "." + strconv.Itoa(c.txN), From: from, Started: now}
	c.Tx = t
	return t
}

// AbandonTx forgets a transaction whose MAIL was refused: it never began,
// and its number is given to the next one.
func (c *Conn) AbandonTx() {
	tx := c.Tx
	if tx == nil {
		return
	}
	c.Tx = nil
	c.txN--
	// What the mail hooks found about a sender that was refused is the
	// connection's.
	for _, f := range tx.findings {
		c.Record(f)
	}
	c.findingsDropped += tx.findingsDropped
}

// Transactions is the number of transactions begun on the connection.
func (c *Conn) Transactions() int { return c.txN }

// EndTx forgets the transaction.
func (c *Conn) EndTx() { c.Tx = nil }

// Clone returns a copy of c that shares nothing mutable with it: the loop
// switches to the copy when a blocking hook times out, so the late hook can
// go on touching the old one without a data race.
func (c *Conn) Clone() *Conn {
	n := *c
	n.notes = cloneNotes(c.notes)
	if c.Tx != nil {
		tx := *c.Tx
		tx.Rcpts = append([]string(nil), c.Tx.Rcpts...)
		tx.notes = cloneNotes(c.Tx.notes)
		n.Tx = &tx
	}
	cloneFindings(&n, c)
	return &n
}

func cloneNotes(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	n := make(map[string]any, len(m))
	for k, v := range m {
		n[k] = v
	}
	return n
}

// LoadInfo is what the server reports of its own load, for plugins such as
// toobusy.
type LoadInfo struct {
	// LoopLag is how long an event on this connection's event loop waits
	// before it is handled, at worst over the last second.
	LoopLag time.Duration
	// PoolQueued, PoolBusy and PoolWorkers describe the workpool.
	PoolQueued, PoolBusy, PoolWorkers int
	// Connections is the number of open connections of the process.
	Connections int64
}

// HookTimer is implemented by a host that measures hooks. Chain.Step
// calls it on the connection's own goroutine, after each plugin's hook
// that ran inline.
type HookTimer interface {
	HookTook(plugin string, h Hook, d time.Duration)
}

// LoadReporter is implemented by the host.
type LoadReporter interface {
	Load() LoadInfo
}

// Load returns the server's load as the host reports it (zero without a
// host, as in unit tests).
func (c *Conn) Load() LoadInfo {
	if c.LoadSource == nil {
		return LoadInfo{}
	}
	return c.LoadSource.Load()
}

// NoteKeys returns the keys of the connection's notes in sorted order.
func (c *Conn) NoteKeys() []string { return sortedKeys(c.notes) }

// NoteKeys returns the keys of the transaction's notes in sorted order.
func (t *Transaction) NoteKeys() []string { return sortedKeys(t.notes) }

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
