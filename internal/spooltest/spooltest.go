// Package spooltest makes, for tests, a message whose body is in a spool
// file, as the server makes one that outgrew spool_after.
package spooltest

import (
	"os"
	"testing"

	"loopmx/plugins"
)

// Message writes body to a file in a test directory and returns the
// message over it. The file is closed when the test ends.
func Message(t testing.TB, body string) *plugins.Message {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "spool")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.WriteString(body); err != nil {
		t.Fatal(err)
	}
	return plugins.NewSpooledMessage(f, int64(len(body)), "ESMTP")
}
