package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// backendView is the configured backends with the operators' runtime
// overrides applied (weight, capabilities, max_inflight) and which of them
// are drained. It is rebuilt only when the overrides change, so a request
// pays one atomic load for it.
type backendView struct {
	version   uint64
	backends  []engine.Backend
	drained   []bool
	overrides []loadstate.Override // per backend, zero when none
}

// viewCache holds the handler's current backendView.
type viewCache struct {
	mu      sync.Mutex
	current atomic.Pointer[backendView]
}

// currentView returns the backends as requests must see them now.
func (h *Handler) currentView() *backendView {
	var ver uint64
	if h.overrides != nil {
		ver = h.overrides.OverridesVersion()
	}
	if v := h.views.current.Load(); v != nil && v.version == ver {
		return v
	}
	h.views.mu.Lock()
	defer h.views.mu.Unlock()
	v := h.views.current.Load()
	if v == nil || v.version != ver {
		var overrides map[string]loadstate.Override
		if h.overrides != nil {
			// Read after the version: at worst the view is newer than its
			// version says, and is rebuilt once more.
			overrides = h.overrides.Overrides()
		}
		v = h.buildView(ver, overrides)
		h.views.current.Store(v)
	}
	return v
}

// buildView applies overrides to the configured backends. Overrides naming a
// backend this config does not have (a backend of an older config, say) are
// kept in the store but apply to nothing.
func (h *Handler) buildView(version uint64, overrides map[string]loadstate.Override) *backendView {
	v := &backendView{
		version:   version,
		backends:  make([]engine.Backend, len(h.backends)),
		drained:   make([]bool, len(h.backends)),
		overrides: make([]loadstate.Override, len(h.backends)),
	}
	copy(v.backends, h.backends)
	for i := range v.backends {
		o, ok := overrides[v.backends[i].Name]
		if !ok {
			continue
		}
		b := &v.backends[i]
		v.overrides[i] = o
		v.drained[i] = o.Drained
		if o.Weight > 0 {
			b.Weight = o.Weight
		}
		if o.MaxInflight > 0 {
			b.MaxInflight = o.MaxInflight
		}
		if len(o.Capabilities) > 0 {
			caps := maps.Clone(b.Capabilities)
			if caps == nil {
				caps = make(map[string]float64, len(o.Capabilities))
			}
			for name, score := range o.Capabilities {
				caps[capabilityKey(name)] = score
			}
			b.Capabilities = caps
		}
	}
	return v
}

// overridePatch is the body of PATCH /model_router/backends/{name}: any of
// weight, capabilities and max_inflight. A field given as null clears that
// override; a field left out keeps it.
type overridePatch struct {
	weight, capabilities, maxInflight        bool // present in the body
	clearWeight, clearCaps, clearMaxInflight bool // present as null
	Weight                                   float64
	Capabilities                             map[string]float64
	MaxInflight                              int
}

// maxPatchBody bounds a PATCH body.
const maxPatchBody = 64 << 10

// parseOverridePatch decodes and validates a PATCH body for backend, with
// the same rules (and words) as the configuration: weight > 0, each
// capability a name of letters, digits, '.', '_' or '-' with a score in
// [0,1], no capability twice in any case, max_inflight ≥ 1. Unknown fields
// are errors.
func parseOverridePatch(backend string, body []byte) (overridePatch, error) {
	var p overridePatch
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&fields); err != nil {
		return p, fmt.Errorf("the body must be a JSON object: %v", err)
	}
	if dec.More() {
		return p, fmt.Errorf("the body must be one JSON object")
	}
	if len(fields) == 0 {
		return p, fmt.Errorf("nothing to change: give weight, capabilities or max_inflight")
	}
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		raw := fields[k]
		isNull := bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
		switch k {
		case "weight":
			p.weight, p.clearWeight = true, isNull
			if isNull {
				continue
			}
			if err := json.Unmarshal(raw, &p.Weight); err != nil {
				return p, fmt.Errorf("backend %s: weight must be a number", backend)
			}
			if !(p.Weight > 0) || math.IsInf(p.Weight, 0) {
				return p, fmt.Errorf("backend %s: weight must be greater than 0", backend)
			}
		case "capabilities":
			p.capabilities, p.clearCaps = true, isNull
			if isNull {
				continue
			}
			var caps map[string]float64
			if err := json.Unmarshal(raw, &caps); err != nil {
				return p, fmt.Errorf("backend %s: capabilities must be an object of scores in [0,1]", backend)
			}
			if len(caps) == 0 {
				return p, fmt.Errorf("backend %s: capabilities must name at least one capability (null clears them)", backend)
			}
			norm, err := normalizeCapabilities(backend, caps)
			if err != nil {
				return p, err
			}
			p.Capabilities = norm
		case "max_inflight":
			p.maxInflight, p.clearMaxInflight = true, isNull
			if isNull {
				continue
			}
			var n float64
			if err := json.Unmarshal(raw, &n); err != nil || n != math.Trunc(n) || n > math.MaxInt32 {
				return p, fmt.Errorf("backend %s: max_inflight must be a whole number", backend)
			}
			if n < 1 {
				return p, fmt.Errorf("backend %s: max_inflight must be at least 1", backend)
			}
			p.MaxInflight = int(n)
		default:
			return p, fmt.Errorf("unknown field %q: give weight, capabilities or max_inflight", k)
		}
	}
	return p, nil
}

// apply returns o with the patch applied.
func (p overridePatch) apply(o loadstate.Override) loadstate.Override {
	switch {
	case p.clearWeight:
		o.Weight = 0
	case p.weight:
		o.Weight = p.Weight
	}
	switch {
	case p.clearCaps:
		o.Capabilities = nil
	case p.capabilities:
		if o.Capabilities == nil {
			o.Capabilities = make(map[string]float64, len(p.Capabilities))
		}
		maps.Copy(o.Capabilities, p.Capabilities)
	}
	switch {
	case p.clearMaxInflight:
		o.MaxInflight = 0
	case p.maxInflight:
		o.MaxInflight = p.MaxInflight
	}
	return o
}
