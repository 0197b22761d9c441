package router

import (
	"bytes"
	"strings"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/names"
)

// A browser keeps cookies and storage, and applies the same-origin
// policy, per origin (scheme, host and port), never per path: under
// Prefix every function shares one origin with every other, and a page
// one serves may read what another answers the same browser. With a
// function domain (Config.Domain) each function is served at a host of
// its own as well, "<name>.<owner>.<domain>", the whole path its own,
// and a version by tag or number at "<tag>.<name>.<owner>.<domain>" (a
// preview with an origin of its own). A label each, not one for all: a
// name and an owner are each up to a DNS label long, and may hold "--".

// normalDomain is domain as hostFunction compares it: lower case, with
// a leading dot and no final one; empty for none.
func normalDomain(domain string) string {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if domain == "" {
		return ""
	}
	return "." + domain
}

// ValidDomain checks a function domain: DNS labels of letters, digits
// and '-', not starting or ending with '-', at most 253 characters, the
// last not all digits (RFC 3696 2): an IPv4 address, or a name below one
// such label, would take addresses for functions' hosts ("10.0.0.1" is
// function 10 of user 0 below "0.1").
func ValidDomain(domain string) error {
	d := strings.TrimSuffix(domain, ".")
	if d == "" || len(d) > 253 {
		return errdefs.Invalid("function domain %q is not a DNS name", domain)
	}
	labels := strings.Split(d, ".")
	for _, label := range labels {
		if err := names.Validate("domain label", strings.ToLower(label)); err != nil {
			return errdefs.Invalid("function domain %q is not a DNS name: %v", domain, err)
		}
	}
	if top := labels[len(labels)-1]; strings.Trim(top, "0123456789") == "" {
		return errdefs.Invalid("function domain %q is not a DNS name: its last label is all digits", domain)
	}
	return nil
}

// underDomain says whether host (a Host field's value: host[:port], in
// any case, perhaps with a final dot) is below the function domain, and
// returns the labels before it.
func (rt *Router) underDomain(host []byte) ([]byte, bool) {
	d := rt.domain
	if d == "" || len(host) <= len(d) {
		return nil, false
	}
	if i := bytes.LastIndexByte(host, ':'); i >= 0 && bytes.IndexByte(host[i:], ']') < 0 {
		host = host[:i]
	}
	host = bytes.TrimSuffix(host, []byte{'.'})
	if len(host) <= len(d) || !bytes.EqualFold(host[len(host)-len(d):], []byte(d)) {
		return nil, false
	}
	return host[:len(host)-len(d)], true
}

// hostFunction says whether host is below the function domain and, if
// it is a function's host there, the owner and name it names: "name" for
// "<name>.<owner>.<domain>", "name@tag" for "<tag>.<name>.<owner>.<domain>"
// (both empty if it names none).
func (rt *Router) hostFunction(host []byte) (owner, name string, under bool) {
	labels, under := rt.underDomain(host)
	if !under {
		return "", "", false
	}
	// One allocation for all, lower case as names are.
	s := string(labels)
	if strings.ContainsFunc(s, func(r rune) bool { return r >= 'A' && r <= 'Z' }) {
		s = strings.ToLower(s)
	}
	var tag string
	if strings.Count(s, ".") == 2 {
		tag, s, _ = strings.Cut(s, ".")
		if names.Validate("tag", tag) != nil {
			return "", "", true
		}
	}
	name, owner, ok := strings.Cut(s, ".")
	if !ok || names.Function(name) != nil || names.User(owner) != nil {
		return "", "", true
	}
	if tag != "" {
		name += "@" + tag
	}
	return owner, name, true
}

// requestHost is the host a request is for: an absolute-form target's,
// else its Host field's (RFC 9112 3.2.2).
func requestHost(uri, host []byte) []byte {
	if len(uri) > 0 && uri[0] != '/' {
		if h, ok := targetHost(string(uri)); ok {
			return []byte(h)
		}
	}
	return host
}

// Serves says whether a request, by its target and Host, is a function's:
// at a function's host, or under Prefix.
func (rt *Router) Serves(uri, host []byte) bool {
	if rt.domain != "" {
		if _, under := rt.underDomain(requestHost(uri, host)); under {
			return true
		}
	}
	return Routes(uri)
}

// noHostFunction is the answer to a host below the function domain that
// names no function.
func noHostFunction(host []byte, domain string) error {
	return errdefs.New(errdefs.ErrNotFound, "no function at host %q: functions are at <name>.<owner>%s, their tagged versions at <tag>.<name>.<owner>%[2]s", truncate(string(host)), domain)
}
