package servertest

import (
	"os"
	"path/filepath"
	"testing"
)

// Stored returns the messages a queue/maildir at spool has delivered
// (the files of spool/new), in the order of their names; none when the
// directory does not exist yet.
func Stored(t testing.TB, spool string) []string {
	t.Helper()
	es, _ := os.ReadDir(filepath.Join(spool, "new"))
	var out []string
	for _, e := range es {
		b, err := os.ReadFile(filepath.Join(spool, "new", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}
