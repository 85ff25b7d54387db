//go:build race

package main

// With go test -race the server binary is built with -race too, so the
// end-to-end tests also look for data races in the real process.
func init() { e2eRace = true }
