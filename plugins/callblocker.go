package plugins

// CallBlocker refines Blocker per call, with the call's arguments: a
// plugin whose rcpt hook waits only for some recipients (a cache miss, a
// domain that only Redis knows) says so for the recipient in call.Arg.
// Like ConnBlocker it is asked on the event loop, right before a hook
// that Blocks reports as blocking, must answer in microseconds, and must
// not change call. A plugin that implements both is asked through
// CallBlocker only.
type CallBlocker interface {
	BlocksCall(c *Conn, call *Call) bool
}
