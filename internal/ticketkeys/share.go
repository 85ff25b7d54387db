package ticketkeys

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Share is the key set as a supervisor hands it to its workers: a file in
// memory (memfd on Linux, an unlinked temporary file elsewhere) that every
// worker inherits as a descriptor. The supervisor rewrites it when the
// keys rotate or a reload changes them; each worker reads it at start and
// then every FollowEvery, and at every takeover. The keys never touch a
// command line, the environment or (on Linux) a disk.
//
// The content is a header line, "loopmx-ticket-keys 1 <body bytes>
// <sha256 of the body in hex>", then one line per key: "<From in unix
// nanoseconds> <key in base64>". A reader that catches a rewrite half
// done sees a checksum that does not match and reads again.
type Share struct {
	f *os.File
}

// FollowEvery is how often a worker reads the shared set again.
const FollowEvery = 10 * time.Second

const shareMagic = "loopmx-ticket-keys 1"

// NewShare makes an empty shared set.
func NewShare() (*Share, error) {
	f, err := memFile()
	if err != nil {
		return nil, fmt.Errorf("ticketkeys: %w", err)
	}
	return &Share{f: f}, nil
}

// ShareFromFD uses descriptor fd, inherited from a supervisor or from the
// previous image of one.
func ShareFromFD(fd int) *Share {
	return &Share{f: os.NewFile(uintptr(fd), "ticket-keys")}
}

// Fd is the descriptor of the shared set.
func (s *Share) Fd() int { return int(s.f.Fd()) }

// Close closes this process's descriptor.
func (s *Share) Close() error { return s.f.Close() }

// Write replaces the shared set with set.
func (s *Share) Write(set Set) error {
	var body bytes.Buffer
	for _, k := range set {
		from := int64(0) // a key from a file: no time
		if !k.From.IsZero() {
			from = k.From.UnixNano()
		}
		fmt.Fprintf(&body, "%d %s\n", from, base64.StdEncoding.EncodeToString(k.Secret[:]))
	}
	sum := sha256.Sum256(body.Bytes())
	data := fmt.Appendf(nil, "%s %d %s\n", shareMagic, body.Len(), hex.EncodeToString(sum[:]))
	data = append(data, body.Bytes()...)
	if _, err := s.f.WriteAt(data, 0); err != nil {
		return fmt.Errorf("ticketkeys: write shared keys: %w", err)
	}
	if err := s.f.Truncate(int64(len(data))); err != nil {
		return fmt.Errorf("ticketkeys: write shared keys: %w", err)
	}
	return nil
}

// Read returns the shared set. It tries again for a while when it catches
// the supervisor rewriting it.
func (s *Share) Read() (Set, error) {
	buf := make([]byte, 4096)
	var err error
	for try := 0; try < 100; try++ {
		var n int
		n, err = s.f.ReadAt(buf, 0)
		if n == 0 && err != nil {
			return nil, fmt.Errorf("ticketkeys: read shared keys: %w", err)
		}
		var set Set
		if set, err = decodeShare(buf[:n]); err == nil {
			return set, nil
		}
		time.Sleep(time.Millisecond)
	}
	return nil, err
}

var errTorn = errors.New("ticketkeys: shared keys: bad header or checksum")

func decodeShare(data []byte) (Set, error) {
	head, body, ok := bytes.Cut(data, []byte("\n"))
	if !ok {
		return nil, errTorn
	}
	f := strings.Fields(string(head))
	if len(f) != 4 || f[0]+" "+f[1] != shareMagic {
		return nil, errTorn
	}
	size, err := strconv.Atoi(f[2])
	if err != nil || size > len(body) {
		return nil, errTorn
	}
	body = body[:size]
	sum := sha256.Sum256(body)
	if hex.EncodeToString(sum[:]) != f[3] {
		return nil, errTorn
	}
	var set Set
	for line := range strings.SplitSeq(strings.TrimSuffix(string(body), "\n"), "\n") {
		if line == "" {
			continue
		}
		from, key, _ := strings.Cut(line, " ")
		ns, err1 := strconv.ParseInt(from, 10, 64)
		b, err2 := base64.StdEncoding.DecodeString(key)
		if err1 != nil || err2 != nil || len(b) != KeySize {
			return nil, fmt.Errorf("ticketkeys: shared keys: bad line %q", from)
		}
		k := Key{From: time.Unix(0, ns)}
		if ns == 0 {
			k.From = time.Time{}
		}
		copy(k.Secret[:], b)
		set = append(set, k)
	}
	if len(set) == 0 {
		return nil, errors.New("ticketkeys: shared keys: empty set")
	}
	return set, nil
}

// Follow keeps a worker's keys in step with the shared set: it reads the
// set and applies it now (an error here means the worker cannot start),
// then, in a goroutine for the life of the process, reads it again every
// FollowEvery and at every takeover, and calls apply with the keys in
// tls.Config order whenever they change. Later failures go to logErr and
// the keys in use stay.
func (s *Share) Follow(apply func([][KeySize]byte), logErr func(error)) error {
	set, err := s.Read()
	if err != nil {
		return err
	}
	last := set.ForTLS(time.Now())
	apply(last)
	go func() {
		for {
			now := time.Now()
			wait := FollowEvery
			if next := set.NextTakeover(now); !next.IsZero() && next.Sub(now) < wait {
				wait = next.Sub(now) + time.Millisecond
			}
			time.Sleep(wait)
			got, err := s.Read()
			if err != nil {
				logErr(err)
				continue
			}
			set = got
			if keys := set.ForTLS(time.Now()); !Equal(keys, last) {
				apply(keys)
				last = keys
			}
		}
	}()
	return nil
}
