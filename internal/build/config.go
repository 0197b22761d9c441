package build

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/spry-run/spry/internal/errdefs"
)

// maxConfigSize bounds package.json, deno.json, tsconfig.json and the
// import map file.
const maxConfigSize = 1 << 20

// projectConfig is what BundleDir reads from a project's configuration
// files.
type projectConfig struct {
	pkg      *packageJSON // nil without package.json
	imports  importMap
	tsconfig string // TsconfigRaw for esbuild
}

// packageJSON holds the package.json fields BundleDir uses.
type packageJSON struct {
	Main                 json.RawMessage   `json:"main"`
	Module               json.RawMessage   `json:"module"`
	Exports              json.RawMessage   `json:"exports"`
	Dependencies         map[string]string `json:"dependencies"`
	OptionalDependencies map[string]string `json:"optionalDependencies"`
	PeerDependencies     map[string]string `json:"peerDependencies"`
	Overrides            json.RawMessage   `json:"overrides"`
	Workspaces           json.RawMessage   `json:"workspaces"`
}

func (p *packageJSON) hasDependencies() bool {
	return p != nil && len(p.Dependencies)+len(p.OptionalDependencies)+len(p.PeerDependencies) > 0
}

// readConfig reads the project's package.json, deno.json (or deno.jsonc)
// and tsconfig.json, all optional, at the root of dir.
func readConfig(dir string) (projectConfig, error) {
	var cfg projectConfig
	if b, err := readConfigFile(dir, "package.json"); err != nil {
		return cfg, err
	} else if b != nil {
		var p packageJSON
		if err := json.Unmarshal(b, &p); err != nil {
			return cfg, errdefs.Invalid("package.json: %v", jsonError(b, err))
		}
		cfg.pkg = &p
	}

	var compilerOptions json.RawMessage
	for _, name := range []string{"deno.json", "deno.jsonc"} {
		b, err := readConfigFile(dir, name)
		if err != nil {
			return cfg, err
		}
		if b == nil {
			continue
		}
		var deno struct {
			Imports         map[string]string `json:"imports"`
			ImportMap       string            `json:"importMap"`
			CompilerOptions json.RawMessage   `json:"compilerOptions"`
		}
		if err := unmarshalJSONC(b, &deno); err != nil {
			return cfg, errdefs.Invalid("%s: %v", name, err)
		}
		imports, base := deno.Imports, dir
		if deno.ImportMap != "" && len(imports) == 0 {
			rel, err := localPath(deno.ImportMap)
			if err != nil {
				return cfg, errdefs.Invalid("%s: importMap: %v", name, err)
			}
			b, err := readConfigFile(dir, rel)
			if err != nil {
				return cfg, err
			}
			if b == nil {
				return cfg, errdefs.Invalid("%s: importMap %q does not exist", name, deno.ImportMap)
			}
			var m struct {
				Imports map[string]string `json:"imports"`
			}
			if err := unmarshalJSONC(b, &m); err != nil {
				return cfg, errdefs.Invalid("%s: %v", rel, err)
			}
			imports, base = m.Imports, filepath.Join(dir, filepath.Dir(filepath.FromSlash(rel)))
		}
		im, err := newImportMap(imports, base, dir)
		if err != nil {
			return cfg, errdefs.Invalid("%s: %v", name, err)
		}
		cfg.imports = im
		compilerOptions = deno.CompilerOptions
		break
	}

	if len(compilerOptions) == 0 {
		b, err := readConfigFile(dir, "tsconfig.json")
		if err != nil {
			return cfg, err
		}
		if b != nil {
			var ts struct {
				CompilerOptions json.RawMessage `json:"compilerOptions"`
			}
			if err := unmarshalJSONC(b, &ts); err != nil {
				return cfg, errdefs.Invalid("tsconfig.json: %v", err)
			}
			compilerOptions = ts.CompilerOptions
		}
	}
	// Only compilerOptions are passed on, as TsconfigRaw: esbuild then
	// reads no tsconfig.json of its own, and an "extends" can't make it
	// read a file elsewhere on the server.
	cfg.tsconfig = "{}"
	if len(compilerOptions) > 0 && !bytes.Equal(compilerOptions, []byte("null")) {
		raw, err := json.Marshal(map[string]json.RawMessage{"compilerOptions": compilerOptions})
		if err != nil {
			return cfg, errdefs.Invalid("compilerOptions: %v", err)
		}
		cfg.tsconfig = string(raw)
	}
	return cfg, nil
}

// readConfigFile returns the content of the regular file rel in dir, or
// nil if there is none.
func readConfigFile(dir, rel string) ([]byte, error) {
	p := filepath.Join(dir, filepath.FromSlash(rel))
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, errdefs.Invalid("%s: cannot read it", rel)
	}
	if !fi.Mode().IsRegular() {
		return nil, errdefs.Invalid("%s is not a regular file", rel)
	}
	if fi.Size() > maxConfigSize {
		return nil, errdefs.New(errdefs.ErrTooLarge, "%s is %d bytes; the limit is %d bytes", rel, fi.Size(), maxConfigSize)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, errdefs.Invalid("%s: cannot read it", rel)
	}
	return b, nil
}

// localPath checks that a path from a configuration file names something
// inside the project, and returns it cleaned, slash-separated, relative.
func localPath(p string) (string, error) {
	if strings.ContainsRune(p, 0) || strings.Contains(p, `\`) {
		return "", errors.New("invalid path " + quoteName(p))
	}
	if strings.HasPrefix(p, "/") || strings.Contains(p, "://") || strings.HasPrefix(p, "file:") {
		return "", errors.New("path " + quoteName(p) + " must be relative to the project")
	}
	clean := path.Clean(p)
	if clean == "." || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", errors.New("path " + quoteName(p) + " is outside the project")
	}
	return clean, nil
}

func quoteName(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// jsonError adds a line and column to a JSON syntax error.
func jsonError(b []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) && se.Offset > 0 && int(se.Offset) <= len(b) {
		line, col := position(b, int(se.Offset)-1)
		return fmt.Errorf("%s at line %d, column %d", strings.TrimPrefix(err.Error(), "json: "), line, col)
	}
	// Go's own words name the Go struct and types ("cannot unmarshal
	// string into Go struct field packageJSON.dependencies of type
	// map[string]string"); the user wrote JSON.
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		// Field names a map, not its element, whose type te.Type is.
		msg := fmt.Sprintf("in %s: %s where %s must be", quoteName(te.Field), jsonArticle(te.Value), jsonKind(te.Type))
		if te.Offset > 0 && int(te.Offset) <= len(b) {
			line, col := position(b, int(te.Offset)-1)
			msg += fmt.Sprintf(", at line %d, column %d", line, col)
		}
		return errors.New(msg)
	}
	return errors.New(strings.TrimPrefix(err.Error(), "json: "))
}

// jsonKind names the JSON value a Go type is decoded from.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Map:
		return "an object of " + strings.TrimPrefix(strings.TrimPrefix(jsonKind(t.Elem()), "a "), "an ") + "s"
	case reflect.Struct:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "a number"
	}
	return "another kind of value"
}

// jsonArticle puts an article before the JSON kind encoding/json names
// ("string", "number", "object", "array", "bool").
func jsonArticle(v string) string {
	switch v {
	case "object", "array":
		return "an " + v
	case "bool":
		return "true or false"
	}
	if strings.HasPrefix(v, "number") {
		return "a number"
	}
	return "a " + v
}

// unmarshalJSONC decodes JSON with comments and trailing commas, as
// deno.json(c) and tsconfig.json allow.
func unmarshalJSONC(b []byte, v any) error {
	plain := stripJSONC(b)
	if err := json.Unmarshal(plain, v); err != nil {
		return jsonError(plain, err)
	}
	return nil
}

// stripJSONC turns JSONC into JSON: comments become spaces (so offsets
// stay the same) and trailing commas are dropped.
func stripJSONC(b []byte) []byte {
	out := make([]byte, len(b))
	copy(out, b)
	lastComma := -1 // offset of a comma that may turn out to be trailing
	for i := 0; i < len(out); i++ {
		switch c := out[i]; {
		case c == '"':
			lastComma = -1
			for i++; i < len(out) && out[i] != '"'; i++ {
				if out[i] == '\\' {
					i++
				}
			}
		case c == '/' && i+1 < len(out) && out[i+1] == '/':
			for ; i < len(out) && out[i] != '\n'; i++ {
				out[i] = ' '
			}
		case c == '/' && i+1 < len(out) && out[i+1] == '*':
			out[i], out[i+1] = ' ', ' '
			for i += 2; i < len(out); i++ {
				if out[i] == '*' && i+1 < len(out) && out[i+1] == '/' {
					out[i], out[i+1] = ' ', ' '
					i++
					break
				}
				if out[i] != '\n' {
					out[i] = ' '
				}
			}
		case c == ',':
			lastComma = i
		case c == '}' || c == ']':
			if lastComma >= 0 {
				out[lastComma] = ' '
			}
			lastComma = -1
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
		default:
			lastComma = -1
		}
	}
	return out
}

// importMap is a deno.json "imports" map: exact specifiers, and prefixes
// (keys ending in "/") of which the longest matching wins.
type importMap struct {
	exact    map[string]string
	prefixes []importPrefix // longest first
}

type importPrefix struct{ key, target string }

// newImportMap validates an import map whose relative targets are
// relative to base (an absolute directory): they become absolute paths,
// which must be inside root.
func newImportMap(imports map[string]string, base, root string) (importMap, error) {
	m := importMap{exact: map[string]string{}}
	for k, v := range imports {
		if k == "" || v == "" {
			return m, errors.New("imports: empty specifier or target")
		}
		if strings.HasSuffix(k, "/") != strings.HasSuffix(v, "/") {
			return m, errors.New("imports: " + quoteName(k) + " and its target " + quoteName(v) + " must both end in / or neither")
		}
		if strings.HasPrefix(v, "./") || strings.HasPrefix(v, "../") {
			abs := filepath.Join(base, filepath.FromSlash(v))
			if abs != root && !strings.HasPrefix(abs, root+string(filepath.Separator)) {
				return m, errors.New("imports: " + quoteName(k) + ": path " + quoteName(v) + " is outside the project")
			}
			v = abs
			if strings.HasSuffix(k, "/") {
				v += string(filepath.Separator)
			}
		}
		if strings.HasSuffix(k, "/") {
			m.prefixes = append(m.prefixes, importPrefix{k, v})
		} else {
			m.exact[k] = v
		}
	}
	sort.Slice(m.prefixes, func(i, j int) bool {
		a, b := m.prefixes[i].key, m.prefixes[j].key
		if len(a) != len(b) {
			return len(a) > len(b)
		}
		return a < b
	})
	return m, nil
}

// lookup maps a specifier, reporting whether the map has it.
func (m importMap) lookup(spec string) (string, bool) {
	if t, ok := m.exact[spec]; ok {
		return t, true
	}
	for _, p := range m.prefixes {
		if strings.HasPrefix(spec, p.key) {
			return p.target + spec[len(p.key):], true
		}
	}
	return "", false
}
