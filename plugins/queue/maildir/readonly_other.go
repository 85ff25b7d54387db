//go:build !linux

package maildir

// readOnlyFS is not checked off Linux (development hosts): a read-only
// spool shows at the first delivery instead.
func readOnlyFS(string) bool { return false }
