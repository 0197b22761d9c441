package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/errdefs"
)

// checkJSON refuses a JSON body that encoding/json decodes into a value
// of type t without a word, but into something other than what it
// says: a field given twice (the last one won, also when the two were
// spelt in different cases, "scopes" and "Scopes"; two maps given for
// one field were merged), a null as a map's value or a list's element
// (it became "" or 0: {"env": {"A": null}} set A to ""), a top-level
// null (taken for {}), bytes that are not UTF-8 or an escaped lone
// surrogate (each became U+FFFD: an env value sent with them was
// stored as another), and anything after the value. data is a body
// json.Unmarshal has accepted into t; checkJSON only reads it, and
// allocates only for object keys.
func checkJSON(data []byte, t reflect.Type) error {
	if !utf8.Valid(data) {
		return errdefs.Invalid("request body is not valid UTF-8")
	}
	s := &jsonScan{data: data}
	s.ws()
	if s.at("null") {
		return errdefs.Invalid("invalid JSON body: null; send a JSON object")
	}
	if err := s.value(t, ""); err != nil {
		return errdefs.Invalid("invalid JSON body: %v", err)
	}
	if s.ws(); s.i < len(s.data) {
		return errdefs.Invalid("invalid JSON body: more than one value")
	}
	return nil
}

// jsonScan walks a valid JSON text.
type jsonScan struct {
	data []byte
	i    int
}

func (s *jsonScan) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *jsonScan) at(lit string) bool {
	return strings.HasPrefix(string(s.data[s.i:min(len(s.data), s.i+len(lit))]), lit)
}

// value walks the value at s.i, to be decoded into t (nil: unknown).
func (s *jsonScan) value(t reflect.Type, path string) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if s.i >= len(s.data) {
		return errors.New("unexpected end")
	}
	switch s.data[s.i] {
	case '{':
		return s.object(t, path)
	case '[':
		return s.array(t, path)
	case '"':
		_, err := s.str()
		if err != nil && path != "" {
			err = fmt.Errorf("%s: %w", path, err)
		}
		return err
	}
	// A literal or a number: it ends at a delimiter.
	for s.i < len(s.data) && !strings.ContainsRune(",]} \t\r\n", rune(s.data[s.i])) {
		s.i++
	}
	return nil
}

// str reads the string at s.i and returns its raw text, quotes
// excluded; an escaped surrogate that is not half of a pair is an
// error.
func (s *jsonScan) str() ([]byte, error) {
	s.i++ // "
	start := s.i
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case '"':
			raw := s.data[start:s.i]
			s.i++
			return raw, nil
		case '\\':
			if s.i+1 < len(s.data) && s.data[s.i+1] == 'u' {
				r := u4(s.data[s.i:])
				s.i += 6
				if !utf16.IsSurrogate(r) {
					continue
				}
				if r < 0xdc00 && utf16.DecodeRune(r, u4(s.data[s.i:])) != utf8.RuneError {
					s.i += 6
					continue
				}
				return nil, fmt.Errorf("a string holds a lone surrogate (\\u%04x), which is no character", r)
			}
			s.i += 2
		default:
			s.i++
		}
	}
	return nil, errors.New("unterminated string")
}

// nullable says whether a null decoded into t means what it says: nil
// (an absent setting, no list), rather than a zero value put in its
// place.
func nullable(t reflect.Type) bool {
	if t == nil {
		return true
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Interface:
		return true
	}
	return false
}

func (s *jsonScan) object(t reflect.Type, path string) error {
	var fields []jsonField
	isStruct := t != nil && t.Kind() == reflect.Struct
	if isStruct {
		fields = jsonFieldsOf(t)
	}
	seen := map[string]bool{}
	s.i++ // {
	for {
		s.ws()
		if s.data[s.i] == '}' {
			s.i++
			return nil
		}
		if s.data[s.i] == ',' {
			s.i++
			s.ws()
		}
		raw, err := s.str()
		if err != nil {
			return err
		}
		key := string(raw)
		if strings.IndexByte(key, '\\') >= 0 {
			if err := json.Unmarshal(s.data[s.i-len(raw)-2:s.i], &key); err != nil {
				return err
			}
		}
		s.ws()
		s.i++ // :
		s.ws()
		var child reflect.Type
		id, name := key, path+"."+key
		if path == "" {
			name = key
		}
		switch {
		case isStruct:
			// Fields are matched as encoding/json matches them: the
			// exact name, else one that differs only in case.
			for _, f := range fields {
				if f.name == key || strings.EqualFold(f.name, key) {
					id, child = f.name, f.typ
					if f.name == key {
						break
					}
				}
			}
		case t != nil && t.Kind() == reflect.Map:
			child = t.Elem()
			if s.at("null") && !nullable(child) {
				return fmt.Errorf("%s is null; give it a value, or leave it out", name)
			}
		}
		if seen[id] {
			if id != key {
				return fmt.Errorf("%s is given twice (as %q and %q: names are matched without regard to case)", name, id, key)
			}
			return fmt.Errorf("%s is given twice", name)
		}
		seen[id] = true
		if err := s.value(child, name); err != nil {
			return err
		}
	}
}

func (s *jsonScan) array(t reflect.Type, path string) error {
	var elem reflect.Type
	if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
		elem = t.Elem()
	}
	s.i++ // [
	for n := 0; ; n++ {
		s.ws()
		if s.data[s.i] == ']' {
			s.i++
			return nil
		}
		if s.data[s.i] == ',' {
			s.i++
			s.ws()
		}
		name := path + "[" + strconv.Itoa(n) + "]"
		if elem != nil && s.at("null") && !nullable(elem) {
			return fmt.Errorf("%s is null; give it a value, or leave it out", name)
		}
		if err := s.value(elem, name); err != nil {
			return err
		}
	}
}

// jsonField is a field of a struct as encoding/json names it.
type jsonField struct {
	name  string
	typ   reflect.Type
	depth int // how deep in embedded structs
}

// jsonFieldsOf are t's fields as encoding/json decodes into them, those
// of embedded structs included, the shallowest of a name winning.
func jsonFieldsOf(t reflect.Type) []jsonField {
	var out []jsonField
	at := map[string]int{} // name -> its index in out
	for _, f := range reflect.VisibleFields(t) {
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		switch {
		case name == "-" || !f.IsExported():
			continue
		case f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct:
			continue // its fields are listed too
		case name == "":
			name = f.Name
		}
		i, ok := at[name]
		switch {
		case !ok:
			at[name] = len(out)
			out = append(out, jsonField{name: name, typ: f.Type, depth: len(f.Index)})
		case len(f.Index) < out[i].depth:
			out[i] = jsonField{name: name, typ: f.Type, depth: len(f.Index)}
		}
	}
	return out
}
