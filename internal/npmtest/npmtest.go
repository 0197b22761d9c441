// Package npmtest serves a small npm registry on loopback for tests, so
// that tests of dependency installs run the real npm against packages the
// test defines and never reach the public registry.
package npmtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha1"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"
)

// Package is one version of a package: its files, package.json included
// (written from Name and Version, plus Main, when Files has none).
type Package struct {
	Name    string
	Version string
	Main    string
	Files   map[string]string
	// Description is in the registry's metadata only, not the tarball: a
	// large one makes npm read a large document.
	Description string
}

// Registry is a running test registry.
type Registry struct {
	URL string // ends in "/"
	srv *httptest.Server
}

// Start serves pkgs until the test ends. Unknown packages get npm's 404.
func Start(t testing.TB, pkgs ...Package) *Registry {
	t.Helper()
	type version struct {
		meta    map[string]any
		tarball []byte
	}
	byName := map[string]map[string]version{}
	r := &Registry{}
	mux := http.NewServeMux()
	r.srv = httptest.NewServer(mux)
	t.Cleanup(r.srv.Close)
	r.URL = r.srv.URL + "/"
	for _, p := range pkgs {
		tgz, err := pack(p)
		if err != nil {
			t.Fatalf("npmtest: pack %s@%s: %v", p.Name, p.Version, err)
		}
		s1 := sha1.Sum(tgz)
		s512 := sha512.Sum512(tgz)
		base := p.Name[strings.LastIndex(p.Name, "/")+1:]
		meta := map[string]any{
			"name":    p.Name,
			"version": p.Version,
			"dist": map[string]any{
				"tarball":   r.URL + p.Name + "/-/" + base + "-" + p.Version + ".tgz",
				"shasum":    hex.EncodeToString(s1[:]),
				"integrity": "sha512-" + base64.StdEncoding.EncodeToString(s512[:]),
			},
		}
		if p.Main != "" {
			meta["main"] = p.Main
		}
		if p.Description != "" {
			meta["description"] = p.Description
		}
		if byName[p.Name] == nil {
			byName[p.Name] = map[string]version{}
		}
		byName[p.Name][p.Version] = version{meta: meta, tarball: tgz}
	}
	mux.HandleFunc("GET /", func(w http.ResponseWriter, req *http.Request) {
		// npm asks for /name, /@scope%2fname, and the tarball URLs above.
		path, err := url.PathUnescape(strings.TrimPrefix(req.URL.EscapedPath(), "/"))
		if err != nil {
			http.NotFound(w, req)
			return
		}
		if name, file, ok := strings.Cut(path, "/-/"); ok {
			for v, ver := range byName[name] {
				if file == name[strings.LastIndex(name, "/")+1:]+"-"+v+".tgz" {
					w.Header().Set("Content-Type", "application/octet-stream")
					w.Write(ver.tarball)
					return
				}
			}
			notFound(w)
			return
		}
		versions, ok := byName[path]
		if !ok {
			notFound(w)
			return
		}
		all := map[string]any{}
		times := map[string]string{}
		var names []string
		for v, ver := range versions {
			all[v] = ver.meta
			times[v] = time.Unix(0, 0).UTC().Format(time.RFC3339)
			names = append(names, v)
		}
		sort.Strings(names) // good enough for the tests' versions
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"name":      path,
			"dist-tags": map[string]string{"latest": names[len(names)-1]},
			"versions":  all,
			"time":      times,
		})
	})
	return r
}

func notFound(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	w.Write([]byte(`{"error":"Not found"}`))
}

// pack makes p's tarball: its files under package/.
func pack(p Package) ([]byte, error) {
	files := map[string]string{}
	for k, v := range p.Files {
		files[k] = v
	}
	if _, ok := files["package.json"]; !ok {
		pj := map[string]string{"name": p.Name, "version": p.Version}
		if p.Main != "" {
			pj["main"] = p.Main
		}
		b, err := json.Marshal(pj)
		if err != nil {
			return nil, err
		}
		files["package.json"] = string(b)
	}
	names := make([]string, 0, len(files))
	for k := range files {
		names = append(names, k)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, name := range names {
		body := files[name]
		hdr := &tar.Header{Name: "package/" + name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Packages the tests install, written for them: CommonJS, like most of
// the registry.
var (
	// IsNumber answers whether its argument is a finite number or a
	// numeric string.
	IsNumber = Package{Name: "is-number", Version: "7.0.0", Main: "index.js", Files: map[string]string{
		"index.js": `'use strict';
module.exports = function isNumber(v) {
  if (typeof v === 'number') return Number.isFinite(v);
  if (typeof v === 'string' && v.trim() !== '') return Number.isFinite(Number(v));
  return false;
};
`}}
	// MS formats whole minutes as "<n>m" and anything else as "<n>ms".
	MS = Package{Name: "ms", Version: "2.1.3", Main: "index.js", Files: map[string]string{
		"index.js": `module.exports = function ms(n) {
  return n % 60000 === 0 ? n / 60000 + 'm' : n + 'ms';
};
`}}
)

// Greet is a JSR package (@spry/greet) as JSR's npm registry serves it:
// @jsr/spry__greet, ES modules, with a subpath export.
var Greet = Package{Name: "@jsr/spry__greet", Version: "1.2.0", Files: map[string]string{
	"package.json": `{"name": "@jsr/spry__greet", "version": "1.2.0", "type": "module",
  "exports": {".": "./mod.js", "./loud": "./loud.js"}}`,
	"mod.js":  "export function greet(name) { return `hello ${name}`; }\n",
	"loud.js": "import { greet } from \"./mod.js\";\nexport function shout(name) { return greet(name).toUpperCase(); }\n",
}}
