// Package ticketkeys keeps the TLS session-ticket keys of a loopmx host:
// one set of keys shared by every worker process, so that a client that
// got a ticket from one worker resumes its session on any other (and on
// any other host that has the same keys).
//
// A set holds keys with the time each starts to encrypt new tickets. The
// key in force encrypts; every key of the set decrypts. Generated keys
// rotate: a new key takes over every Policy.Rotate, and a key that has
// stopped encrypting is kept Policy.Keep longer so that the tickets it
// sealed still resume. The next key is made one rotation ahead, so every
// process already holds it when it takes over. Keys can also come from a
// file that the operator distributes to every host (ReadFile).
package ticketkeys

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"loopmx/config"
)

// KeySize is the size of a session-ticket key (tls.Config.SetSessionTicketKeys).
const KeySize = 32

// MaxKeys bounds a set: a ticket is tried against every key in turn.
const MaxKeys = 16

// Key is one session-ticket key.
type Key struct {
	Secret [KeySize]byte
	// From is when the key starts to encrypt new tickets; a later key
	// takes over at its own From. Keys read from a file all have the zero
	// time: the first of them encrypts.
	From time.Time
}

// Set is the keys of a host, oldest first.
type Set []Key

// current is the index of the key that encrypts at now: the latest From
// not after now, the first one of equal keys; -1 when every key is for
// later.
func (s Set) current(now time.Time) int {
	cur := -1
	for i, k := range s {
		if !k.From.After(now) && (cur < 0 || k.From.After(s[cur].From)) {
			cur = i
		}
	}
	return cur
}

// ForTLS returns the keys as tls.Config.SetSessionTicketKeys takes them:
// the key that encrypts at now first, then every other key of the set.
func (s Set) ForTLS(now time.Time) [][KeySize]byte {
	cur := s.current(now)
	if cur < 0 {
		cur = 0 // not reached by a set from Keeper; be safe all the same
	}
	out := make([][KeySize]byte, 0, len(s))
	if len(s) > 0 {
		out = append(out, s[cur].Secret)
	}
	for i, k := range s {
		if i != cur {
			out = append(out, k.Secret)
		}
	}
	return out
}

// NextTakeover is the earliest From after now, or the zero time: the
// moment a process must switch the key it encrypts with.
func (s Set) NextTakeover(now time.Time) time.Time {
	var next time.Time
	for _, k := range s {
		if k.From.After(now) && (next.IsZero() || k.From.Before(next)) {
			next = k.From
		}
	}
	return next
}

// Policy is the ticket-key settings of tls.ini.
type Policy struct {
	Disabled bool          // session_tickets = false: no tickets, no resumption
	File     string        // ticket_key_file: keys from the operator; "" generates them
	Rotate   time.Duration // ticket_key_rotate: a generated key encrypts this long
	Keep     time.Duration // ticket_key_keep: and decrypts this long after
}

// Defaults of the tls.ini keys.
const (
	DefaultRotate = 12 * time.Hour
	DefaultKeep   = 24 * time.Hour
	// Go's server refuses tickets older than seven days whatever the key.
	maxAge = 7 * 24 * time.Hour
)

// ReadPolicy reads the ticket keys of tls.ini from pc. Bad values are
// recorded in pc (pc.Check reports them) or returned.
func ReadPolicy(pc *config.PluginConfig) (Policy, error) {
	p := Policy{
		Disabled: !pc.Bool("", "session_tickets", true),
		File:     pc.Path("", "ticket_key_file", ""),
		Rotate:   pc.Duration("", "ticket_key_rotate", DefaultRotate),
		Keep:     pc.Duration("", "ticket_key_keep", DefaultKeep),
	}
	if p.Rotate < time.Minute || p.Rotate > maxAge {
		return p, fmt.Errorf("config: %s: ticket_key_rotate: %v is not between 1m and 168h", pc.File(), p.Rotate)
	}
	if p.Keep < 0 || p.Keep > maxAge {
		return p, fmt.Errorf("config: %s: ticket_key_keep: %v is not between 0s and 168h", pc.File(), p.Keep)
	}
	return p, nil
}

// PolicyFrom reads the ticket keys of cfg's tls.ini, a config that has
// already been checked (loop.LoadTLS reads the same keys and reports
// unknown ones).
func PolicyFrom(cfg *config.Config) (Policy, error) {
	pc, err := cfg.Plugin("tls")
	if err != nil {
		return Policy{}, err
	}
	return ReadPolicy(pc)
}

// ReadFile reads a key file: one key a line, 32 random bytes in standard
// base64 (what `openssl rand -base64 32` prints). Empty lines and lines
// that start with # are skipped. The first key encrypts new tickets;
// every key decrypts. At most MaxKeys keys.
func ReadFile(path string) (Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: tls.ini: ticket_key_file: %w", err)
	}
	var s Set
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(b) != KeySize {
			return nil, fmt.Errorf("config: tls.ini: ticket_key_file: %s line %d: not %d bytes in base64 (make a key with: openssl rand -base64 32)", path, i+1, KeySize)
		}
		var k Key
		copy(k.Secret[:], b)
		if slices.ContainsFunc(s, func(o Key) bool { return o.Secret == k.Secret }) {
			return nil, fmt.Errorf("config: tls.ini: ticket_key_file: %s line %d: the same key twice", path, i+1)
		}
		s = append(s, k)
	}
	if len(s) == 0 {
		return nil, fmt.Errorf("config: tls.ini: ticket_key_file: %s holds no key (make one with: openssl rand -base64 32)", path)
	}
	if len(s) > MaxKeys {
		return nil, fmt.Errorf("config: tls.ini: ticket_key_file: %s holds %d keys, more than %d", path, len(s), MaxKeys)
	}
	return s, nil
}

// Keeper holds the key set of one host and rotates generated keys. It is
// not safe for concurrent use.
type Keeper struct {
	policy Policy
	set    Set
	rand   io.Reader
}

// NewKeeper makes the keys of p: read from p.File, or generated.
func NewKeeper(p Policy, now time.Time) (*Keeper, error) {
	k := &Keeper{rand: rand.Reader}
	if err := k.SetPolicy(p, now); err != nil {
		return nil, err
	}
	return k, nil
}

// SetPolicy applies the settings of a reloaded tls.ini: a key file is read
// again; generated keys are kept (with the new timings) unless the
// previous keys came from a file. On error nothing changes.
func (k *Keeper) SetPolicy(p Policy, now time.Time) error {
	if p.File != "" {
		s, err := ReadFile(p.File)
		if err != nil {
			return err
		}
		k.policy, k.set = p, s
		return nil
	}
	if k.policy.File != "" {
		k.set = nil // the file's keys are the operator's; start our own
	}
	k.policy = p
	k.Advance(now)
	return nil
}

// Adopt takes over a set made by a previous image of this process (a
// binary upgrade) when the keys are generated, so tickets issued before
// the upgrade still resume.
func (k *Keeper) Adopt(s Set, now time.Time) {
	if k.policy.File != "" || len(s) == 0 {
		return
	}
	k.set = slices.Clone(s)
	k.Advance(now)
}

// Set returns the current keys.
func (k *Keeper) Set() Set { return k.set }

// Policy returns the settings in force.
func (k *Keeper) Policy() Policy { return k.policy }

// lead is how long before it takes over a key made late (the host was
// suspended past a rotation) is handed out: time for every worker to
// read it (they look every FollowEvery).
const lead = 3 * FollowEvery

// Advance rotates generated keys at now: it makes sure one key encrypts
// and the next one is already made, and drops the keys whose tickets
// have had their time. It reports whether the set changed.
func (k *Keeper) Advance(now time.Time) bool {
	if k.policy.File != "" {
		return false
	}
	changed := false
	if k.set.current(now) < 0 {
		k.set = append(k.set, k.newKey(now))
		changed = true
	}
	if k.set.NextTakeover(now).IsZero() {
		latest := k.set[k.set.current(now)].From
		k.set = append(k.set, k.newKey(later(latest.Add(k.policy.Rotate), now.Add(lead))))
		changed = true
	}
	// A key stops encrypting when the next one takes over, and goes once
	// Keep has passed since.
	keep := k.set[:0]
	for _, key := range k.set {
		if end := k.takenOver(key); end.IsZero() || now.Before(end.Add(k.policy.Keep)) {
			keep = append(keep, key)
		} else {
			changed = true
		}
	}
	k.set = keep
	return changed
}

// takenOver is when the key after key took over, or zero.
func (k *Keeper) takenOver(key Key) time.Time {
	var end time.Time
	for _, o := range k.set {
		if o.From.After(key.From) && (end.IsZero() || o.From.Before(end)) {
			end = o.From
		}
	}
	return end
}

// Next is when Advance has something to do: the next takeover or the
// next key to drop. Zero for keys from a file.
func (k *Keeper) Next(now time.Time) time.Time {
	if k.policy.File != "" {
		return time.Time{}
	}
	next := k.set.NextTakeover(now)
	for _, key := range k.set {
		if end := k.takenOver(key); !end.IsZero() && !end.After(now) {
			if drop := end.Add(k.policy.Keep); next.IsZero() || drop.Before(next) {
				next = drop
			}
		}
	}
	return next
}

func (k *Keeper) newKey(from time.Time) Key {
	key := Key{From: from}
	if _, err := io.ReadFull(k.rand, key.Secret[:]); err != nil {
		panic("ticketkeys: no randomness: " + err.Error()) // crypto/rand does not fail on Linux
	}
	return key
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Equal reports whether a and b hold the same keys in the same order.
func Equal(a, b [][KeySize]byte) bool {
	return slices.Equal(a, b)
}
