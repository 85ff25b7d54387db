package dkim

import (
	"strings"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"loopmx/plugins"
)

// The results of a signature (RFC 8601 2.7.1).
const (
	None      = "none"      // the message has no signature
	Pass      = "pass"      // the signature verified
	Fail      = "fail"      // it did not: the body or a signed field changed, or the key does not fit
	TempError = "temperror" // the key could not be looked up now
	PermError = "permerror" // the signature or its key is broken or missing
)

// Result is the outcome of one signature. It prints (%v) as an
// Authentication-Results dkim method result without the "dkim=".
type Result struct {
	Result     string
	Domain     string // d=
	Identifier string // i=
	Reason     string // why it did not pass, for people

	err error // the library's account, for the log
}

// fromVerification turns the library's verdict into a Result.
func fromVerification(v *msgdkim.Verification) Result {
	r := Result{Result: Pass, Domain: strings.ToLower(v.Domain), Identifier: v.Identifier, err: v.Err}
	switch {
	case v.Err == nil:
	case msgdkim.IsTempFail(v.Err):
		r.Result = TempError
	case msgdkim.IsPermFail(v.Err):
		r.Result = PermError
	default:
		r.Result = Fail
	}
	if v.Err != nil {
		r.Reason = strings.TrimPrefix(v.Err.Error(), "dkim: ")
	}
	return r
}

// String is the result and properties of the method result:
// "pass header.d=example.org header.i=@example.org", "none".
func (r Result) String() string {
	s := r.Result
	if r.Domain != "" {
		s += " header.d=" + r.Domain
	}
	if r.Identifier != "" && !strings.ContainsAny(r.Identifier, " ;()\"") {
		s += " header.i=" + r.Identifier
	}
	return s
}

// finding is the result for the results plugin: "pass: example.org",
// "fail: example.org (body hash did not verify)", "skip (none): no
// signature", "err (temperror): example.org (...)".
func (r Result) finding() plugins.Finding {
	f := plugins.Finding{Plugin: Name, Message: r.Domain}
	switch r.Result {
	case Pass:
		f.Outcome = plugins.Pass
	case Fail:
		f.Outcome = plugins.Fail
	case None:
		f.Outcome, f.Word, f.Message = plugins.Skip, None, "no signature"
	default:
		f.Outcome, f.Word = plugins.Err, r.Result
	}
	if r.Reason != "" {
		f.Message += " (" + r.Reason + ")"
	}
	return f
}
