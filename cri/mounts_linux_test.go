package cri

import "testing"

func TestUnescapeMountPath(t *testing.T) {
	if got := unescapeMountPath(`/a\040b/c\011d`); got != "/a b/c\td" {
		t.Errorf("got %q", got)
	}
}
