package controllers

import (
	"fmt"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
)

const (
	// maxConditionMessage bounds a condition's message far below the 32768 characters the CRD
	// allows: a longer message makes the API server refuse the whole status patch.
	maxConditionMessage = 4096
	// maxEventNote is the longest note the API server accepts on an event; a longer one is
	// refused and the event lost.
	maxEventNote = 1024
)

// bounded cuts s to at most limit bytes, on a character boundary, and says how much it cut. It
// keeps the start, which names the field at fault.
func bounded(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	// The number cut has no more digits than len(s), so this suffix is never too short.
	room := limit - len(fmt.Sprintf(" … (%d bytes cut)", len(s)))
	cut := max(room, 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf(" … (%d bytes cut)", len(s)-cut)
}

// boundedRecorder cuts every event note to what the API server accepts.
type boundedRecorder struct{ events.EventRecorder }

func (b boundedRecorder) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	b.EventRecorder.Eventf(regarding, related, eventtype, reason, action, "%s", bounded(fmt.Sprintf(note, args...), maxEventNote))
}

// boundRecorder wraps r, once, in a boundedRecorder.
func boundRecorder(r events.EventRecorder) events.EventRecorder {
	if _, ok := r.(boundedRecorder); ok || r == nil {
		return r
	}
	return boundedRecorder{r}
}
