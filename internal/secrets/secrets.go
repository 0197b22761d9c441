// Package secrets encrypts secret values (functions' secret environment
// variables) for storage: AES-256-GCM with a key kept in its own file
// beside the database, so a copy of the database alone reveals nothing.
// Each value is bound to where it belongs (its function and name) as
// additional data, so a ciphertext moved elsewhere fails to decrypt.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const prefix = "enc:v1:"

// Box encrypts and decrypts with one key.
type Box struct {
	aead cipher.AEAD
}

// OpenKeyFile loads the key from path, creating a new random key (mode
// 0600) if the file does not exist.
func OpenKeyFile(path string) (*Box, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err = createKeyFile(path)
		if err != nil {
			return nil, fmt.Errorf("create secret key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("read secret key: %w", err)
	}
	b, err := New(key)
	if err != nil {
		// Named: it is the operator's to restore from a backup.
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// createKeyFile makes a new key at path, whole or not at all: it is
// written and synced under a temporary name, then linked to path, and the
// directory synced, so that neither a crash nor another start reading it
// meanwhile finds it empty or half written, and a key that has sealed
// secrets is not lost to a power cut. A link, unlike a rename, never
// replaces: of two starts making a key at once, both use the one that
// was linked first.
func createKeyFile(path string) ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".secret-key-*") // mode 0600
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(key); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.Link(f.Name(), path); errors.Is(err, os.ErrExist) {
		return os.ReadFile(path)
	} else if err != nil {
		return nil, err
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return nil, err
	}
	return key, nil
}

// New returns a Box for a 32-byte key.
func New(key []byte) (*Box, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("secret key is %d bytes, want 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Box{aead: aead}, nil
}

// Seal encrypts value for the place named by context.
func (b *Box) Seal(value, context string) (string, error) {
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	ct := b.aead.Seal(nonce, nonce, []byte(value), []byte(context))
	return prefix + base64.RawStdEncoding.EncodeToString(ct), nil
}

// Open decrypts a value sealed for context.
func (b *Box) Open(sealed, context string) (string, error) {
	enc, ok := strings.CutPrefix(sealed, prefix)
	if !ok {
		return "", errors.New("not a sealed secret")
	}
	ct, err := base64.RawStdEncoding.DecodeString(enc)
	if err != nil || len(ct) < b.aead.NonceSize() {
		return "", errors.New("corrupt sealed secret")
	}
	pt, err := b.aead.Open(nil, ct[:b.aead.NonceSize()], ct[b.aead.NonceSize():], []byte(context))
	if err != nil {
		return "", errors.New("sealed secret does not decrypt with this key")
	}
	return string(pt), nil
}

// checkContext binds the key check: no secret's place (owner/name/KEY)
// has a colon, so no sealed secret passes for it.
const checkContext = "spry:secret-key-check"

// KeyCheck seals a value that CheckKey opens again with this key only:
// kept beside the secrets, it tells whether a key is theirs.
func (b *Box) KeyCheck() (string, error) {
	return b.Seal("spry", checkContext)
}

// CheckKey reports whether check was made by KeyCheck with this key.
func (b *Box) CheckKey(check string) bool {
	v, err := b.Open(check, checkContext)
	return err == nil && v == "spry"
}
