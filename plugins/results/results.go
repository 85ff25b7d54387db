// Package results is the results plugin: it gathers what every plugin
// found about a connection and its transactions (the findings plugins
// record with plugins.Conn.Record), writes one summary line per
// transaction and one per connection, and, when results.ini asks for it,
// publishes each finding to Redis.
//
// A transaction is summarised when the server ends it (the tx_end hook),
// so every plugin has had its say about it.
package results

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/redisx"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "results"

// ChannelPrefix starts the Redis channel a transaction's (or a
// connection's) results are published to; the id follows.
const ChannelPrefix = "result-"

// stateNote holds results' own bookkeeping in the connection's notes.
const stateNote = "results.state"

func init() { plugins.Register(Name, setup) }

// Results is the plugin.
type Results struct {
	publish bool
	client  *redisx.Client
	closed  atomic.Bool // Close released client
	down    *redisx.DownLogger
}

func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	publish := pc.Bool("", "redis_publish", false)
	if err := pc.Check(); err != nil {
		return nil, err
	}
	r := &Results{publish: publish, down: redisx.NewDownLogger(Name)}
	if !publish {
		return r, nil
	}
	client, ok, err := redisx.Open(cfg)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("config: %s: [main] redis_publish: %q needs %s in the config directory",
			pc.File(), pc.String("", "redis_publish", ""), redisx.File)
	}
	r.client = client
	return r, nil
}

// Name implements plugins.Plugin.
func (*Results) Name() string { return Name }

// Blocks implements plugins.Blocker: with redis_publish the mail and
// disconnect hooks publish and run on the workpool; otherwise nothing
// blocks.
func (r *Results) Blocks(h plugins.Hook) bool {
	return r.publish && (h == plugins.HookMail || h == plugins.HookDisconnect)
}

// downNote carries, from BlocksConn to the hook, why the hook must not
// call Redis (redisx.ErrDown or redisx.ErrBusy).
const downNote = "results.redis_down"

// BlocksConn implements plugins.ConnBlocker: while the Redis client's
// circuit breaker is open, or max_inflight calls already wait for Redis,
// the hook runs inline on the event loop and drops its results instead
// of waiting for a worker and for Redis.
func (r *Results) BlocksConn(c *plugins.Conn, _ plugins.Hook) bool {
	if err := r.client.Ready(c.Log); err != nil {
		c.SetNote(downNote, err)
		return false
	}
	return true
}

// Close implements plugins.Closer.
func (r *Results) Close() error {
	return redisx.ReleaseOnce(r.client, &r.closed)
}

// state is what results keeps per connection. Its lock guards against a
// timed-out hook of another plugin, which leaves results' hooks running
// on two copies of the connection that share this state.
type state struct {
	mu      sync.Mutex
	pending []publication // results not yet published
}

type publication struct {
	channel string
	doc     []byte
}

// stateOf returns c's state, making it on first use.
func stateOf(c *plugins.Conn) *state {
	st, _ := c.Note(stateNote).(*state)
	if st == nil {
		st = &state{}
		c.SetNote(stateNote, st)
	}
	return st
}

// TxEnded implements plugins.TxEndHook: the transaction is summarised,
// inline; its publications wait for the next hook that may block.
func (r *Results) TxEnded(c *plugins.Conn, tx *plugins.Transaction) {
	st := stateOf(c)
	st.mu.Lock()
	r.summarise(c, st, tx)
	st.mu.Unlock()
}

// Mail implements plugins.MailHook: with redis_publish it sends what the
// transactions before this one left to publish.
func (r *Results) Mail(c *plugins.Conn, _ string) plugins.Result {
	st := stateOf(c)
	st.mu.Lock()
	pending := r.take(st)
	st.mu.Unlock()
	r.send(c, pending)
	return plugins.NoOpinion()
}

// Disconnect implements plugins.DisconnectHook: the connection is
// summarised (the host ended its last transaction before).
func (r *Results) Disconnect(c *plugins.Conn) {
	st := stateOf(c)
	st.mu.Lock()
	r.summarise(c, st, nil)
	pending := r.take(st)
	st.mu.Unlock()
	r.send(c, pending)
}

// Result is one finding as published.
type Result struct {
	Conn    string `json:"conn"`
	Tx      string `json:"tx,omitempty"`
	Plugin  string `json:"plugin"`
	Scope   string `json:"scope"`   // "conn" or "tx": what the finding belongs to
	Outcome string `json:"outcome"` // pass, fail, skip or err
	Word    string `json:"word,omitempty"`
	Message string `json:"message,omitempty"`
}

// summarise writes the summary line of tx, or of the connection when tx
// is nil, and queues its findings for publishing. A transaction's summary
// shows the connection's findings too, apart from its own: they apply to
// it.
func (r *Results) summarise(c *plugins.Conn, st *state, tx *plugins.Transaction) {
	conn, dropped := c.Findings()
	var own []plugins.Finding
	id := c.ID
	if tx != nil {
		id = tx.ID
		var n int
		own, n = tx.Findings()
		dropped += n
	}
	if c.Log != nil {
		if ev := c.Log.Info(); ev.Enabled() {
			ev = ev.Str("plugin", Name).Str("conn", c.ID)
			d := zerolog.Dict().Dict("conn", dict(conn))
			if tx != nil {
				ev = ev.Str("tx", tx.ID)
				d = d.Dict("tx", dict(own))
			}
			ev = ev.Dict("results", d)
			if dropped > 0 {
				ev = ev.Int("results_dropped", dropped)
			}
			ev.Msg("results")
		}
	}
	if !r.publish {
		return
	}
	txID := ""
	if tx != nil {
		txID = tx.ID
	}
	st.pending = appendDocs(st.pending, ChannelPrefix+id, c.ID, txID, "conn", conn)
	st.pending = appendDocs(st.pending, ChannelPrefix+id, c.ID, txID, "tx", own)
}

// appendDocs queues the publication of each finding of one scope.
func appendDocs(pending []publication, channel, conn, tx, scope string, list []plugins.Finding) []publication {
	for _, f := range list {
		doc, err := json.Marshal(Result{Conn: conn, Tx: tx, Plugin: f.Plugin, Scope: scope,
			Outcome: f.Outcome.String(), Word: f.Word, Message: f.Message})
		if err == nil {
			pending = append(pending, publication{channel: channel, doc: doc})
		}
	}
	return pending
}

// dict is the log form of one scope's findings: per plugin, in the order
// plugins first recorded, its findings as Entry writes them.
func dict(list []plugins.Finding) *zerolog.Event {
	var order []string
	items := make(map[string][]string, len(list))
	for _, f := range list {
		if _, seen := items[f.Plugin]; !seen {
			order = append(order, f.Plugin)
		}
		items[f.Plugin] = append(items[f.Plugin], Entry(f))
	}
	d := zerolog.Dict()
	for _, p := range order {
		d.Strs(p, items[p])
	}
	return d
}

// Entry is how a summary line shows a finding: "<outcome>", then
// " (<word>)" when the finding has a word other than its outcome, then
// ": <message>" when it has a message. For example "pass",
// "fail: listed by zen.example", "fail (softfail): not designated".
func Entry(f plugins.Finding) string {
	s := f.Outcome.String()
	if f.Word != "" && f.Word != s {
		s += " (" + f.Word + ")"
	}
	if f.Message != "" {
		s += ": " + f.Message
	}
	return s
}

// take hands over the pending publications; st.mu is held.
func (r *Results) take(st *state) []publication {
	p := st.pending
	st.pending = nil
	return p
}

// send publishes in one round trip. Results are for watching, not for
// mail flow: a failure is logged (at most once a minute) and the results
// are dropped, as they are, without contacting Redis, when BlocksConn
// found Redis down or busy.
// publishScript publishes its pairs of channel and document in order, in
// one round trip. A script, not a pipeline: a Redis Cluster client sends
// each PUBLISH of a pipeline to a node of its choosing, and subscribers
// would then see a transaction's results out of order.
//
// ARGV channel, document, channel, document, ...
var publishScript = redis.NewScript(`
for i = 1, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return 0
`)

func (r *Results) send(c *plugins.Conn, pending []publication) {
	down, _ := c.Note(downNote).(error)
	if down != nil {
		c.SetNote(downNote, nil)
	}
	if len(pending) == 0 || r.client == nil {
		return
	}
	err := down
	if err == nil {
		args := make([]any, 0, 2*len(pending))
		for _, pub := range pending {
			args = append(args, pub.channel, pub.doc)
		}
		err = r.client.Do(c.Log, func(ctx context.Context) error {
			return publishScript.Run(ctx, r.client, nil, args...).Err()
		})
	}
	if errors.Is(err, redisx.ErrBusy) {
		return // redisx logs it; Redis is not down
	}
	if err != nil {
		r.down.Down(c.Log, err)
		return
	}
	r.down.Up(c.Log)
}

var (
	_ plugins.MailHook       = (*Results)(nil)
	_ plugins.TxEndHook      = (*Results)(nil)
	_ plugins.DisconnectHook = (*Results)(nil)
	_ plugins.Blocker        = (*Results)(nil)
	_ plugins.ConnBlocker    = (*Results)(nil)
	_ plugins.Closer         = (*Results)(nil)
)
