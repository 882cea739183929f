package postgres

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzTextHead: textHead, which turns a Locks prefix into a parameter
// PostgreSQL's text accepts, returns the longest head of s that is valid
// UTF-8 without NUL. Locks sends that head to the server and repeats the
// exact byte-wise test in Go, so a wrong head would drop or add names.
func FuzzTextHead(f *testing.F) {
	for _, s := range []string{"", "a", "node/", "a%", `a\`, "é", "é"[:1], "a\xffb", "\x00", "ab\x00c", "\xed\xa0\x80", "\U0001f512x", "x\U0001f512"[:3]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h := textHead(s)
		if !strings.HasPrefix(s, h) {
			t.Fatalf("textHead(%q) = %q: not a prefix", s, h)
		}
		if !utf8.ValidString(h) || strings.ContainsRune(h, 0) {
			t.Fatalf("textHead(%q) = %q: not storable as text", s, h)
		}
		if rest := s[len(h):]; rest != "" {
			r, size := utf8.DecodeRuneInString(rest)
			if r != 0 && !(r == utf8.RuneError && size == 1) {
				t.Fatalf("textHead(%q) = %q: stops before the valid rune %q", s, h, r)
			}
		}
	})
}
