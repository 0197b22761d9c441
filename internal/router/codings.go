package router

import (
	"bytes"
	"strings"
)

// The header parser takes any Transfer-Encoding of an answer for a single
// "chunked" (its own header then says so): "gzip, chunked" lost its gzip,
// and the client got gzip bytes that nothing said were gzip; "gzip"
// alone, a body that runs to the connection's end (RFC 9112 6.3), was
// read as chunks. So the router reads the codings from the raw head. A
// list that ends in one chunked is re-framed: the body is de-chunked and
// chunked again, and an HTTP/1.1 client is told the other codings; an
// HTTP/1.0 client can take none (6.1), and any other list cannot be
// re-framed (chunked must not be applied twice): a 502, for an answer
// with a body (one without has nothing to frame). The instance is
// sent no TE, so chunked was the only coding it could use (RFC 9110
// 10.1.4).

// answerCodings returns the transfer codings, chunked aside, of the
// answer whose raw head is head, as they were sent ("" for none); ok is
// false for a list the router cannot pass on.
func answerCodings(head []byte) (codings string, ok bool) {
	var list []string
	chunked, last := 0, false
	for len(head) > 0 {
		var line []byte
		line, head, _ = bytes.Cut(head, []byte{'\n'})
		const name = "transfer-encoding:"
		if len(line) <= len(name) || line[0]|0x20 != 't' || !bytes.EqualFold(line[:len(name)], []byte(name)) {
			continue
		}
		for v := range strings.SplitSeq(string(line[len(name):]), ",") {
			switch v = strings.Trim(v, " \t\r"); {
			case v == "", strings.EqualFold(v, "identity"):
				// (No coding; obsolete, and the parser ignores it.)
			case strings.EqualFold(v, "chunked"):
				chunked++
				last = true
			default:
				list = append(list, v)
				last = false
			}
		}
	}
	switch {
	case chunked == 0 && len(list) == 0:
		return "", true
	case chunked != 1 || !last:
		return "", false
	}
	return strings.Join(list, ", "), true
}

// withCodings has head, a response head written with "Transfer-Encoding:
// chunked", say the codings before chunked.
func withCodings(head []byte, codings string) []byte {
	const te = "\r\nTransfer-Encoding: chunked\r\n"
	i := bytes.Index(head, []byte(te))
	if codings == "" || i < 0 {
		return head
	}
	out := make([]byte, 0, len(head)+len(codings)+2)
	out = append(out, head[:i+len("\r\nTransfer-Encoding: ")]...)
	out = append(out, codings...)
	out = append(out, ", chunked\r\n"...)
	return append(out, head[i+len(te):]...)
}
