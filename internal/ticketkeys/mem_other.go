//go:build !linux

package ticketkeys

import "os"

// memFile is an unlinked temporary file, readable by this user only,
// where memfd does not exist.
func memFile() (*os.File, error) {
	f, err := os.CreateTemp("", "loopmx-ticket-keys-")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}
