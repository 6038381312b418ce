// `--json` output is written with the control channel's JSON type, indented (ControlJSON's
// `rendered()`): one JSON type, one string encoder, for the CLI and the control socket. Keys keep
// the order they are given in, so the output reads the same on every run and in every version.

import NBDServer

/// A JSON value to print: the same type a control message is made of.
typealias JSONValue = ControlJSON
