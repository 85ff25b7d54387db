package loop

// CommandOf is commandOf, for the tests of package loop_test.
var CommandOf = commandOf
