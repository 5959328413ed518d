package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Topology is the simulated node's Neuron hardware: Devices chips with CoresPerDevice NeuronCores each.
// Core ids are global on the node: device N holds cores N*CoresPerDevice .. (N+1)*CoresPerDevice-1.
type Topology struct {
	Devices        int
	CoresPerDevice int
}

// Cores is the node's NeuronCore count (allocatable aws.amazon.com/neuroncore).
func (t Topology) Cores() int { return t.Devices * t.CoresPerDevice }

// instanceTypes mirrors operator/neuron_operator/catalogue.py (TestInstanceTypesMatchCatalogue keeps them equal).
var instanceTypes = map[string]Topology{
	"inf1.xlarge":   {Devices: 1, CoresPerDevice: 4},
	"inf2.xlarge":   {Devices: 1, CoresPerDevice: 2},
	"inf2.24xlarge": {Devices: 6, CoresPerDevice: 2},
	"inf2.48xlarge": {Devices: 12, CoresPerDevice: 2},
	"trn1.2xlarge":  {Devices: 1, CoresPerDevice: 2},
	"trn1.32xlarge": {Devices: 16, CoresPerDevice: 2},
}

// resource is one of the two extended resources; a "unit" is what one kubelet device ID stands for.
type resource struct {
	Name        string // extended resource name registered with kubelet
	IDPrefix    string // device IDs are IDPrefix + unit index
	Socket      string // socket file name in the kubelet's device-plugin directory
	WholeDevice bool   // units are devices (aws.amazon.com/neuron) rather than cores
}

var (
	coreResource   = resource{Name: "aws.amazon.com/neuroncore", IDPrefix: "neuroncore-", Socket: "neuron-sim-neuroncore.sock"}
	deviceResource = resource{Name: "aws.amazon.com/neuron", IDPrefix: "neuron-", Socket: "neuron-sim-neuron.sock", WholeDevice: true}
	resources      = []resource{coreResource, deviceResource}
)

// Units is how many device IDs the resource advertises on a node of topology t.
func (r resource) Units(t Topology) int {
	if r.WholeDevice {
		return t.Devices
	}
	return t.Cores()
}

// ID is the kubelet device ID of unit i.
func (r resource) ID(i int) string { return r.IDPrefix + strconv.Itoa(i) }

// Parse is the unit index of a device ID; anything this plugin did not advertise is an error.
func (r resource) Parse(id string, t Topology) (int, error) {
	i, err := strconv.Atoi(strings.TrimPrefix(id, r.IDPrefix))
	if err != nil || r.ID(i) != id || i < 0 || i >= r.Units(t) { // ID(i) != id rejects "+1", "01", a wrong prefix
		return 0, fmt.Errorf("unknown %s device ID %q (this node has %s0..%s%d)", r.Name, id, r.IDPrefix, r.IDPrefix, r.Units(t)-1)
	}
	return i, nil
}

// CoresOf is the global core ids of unit i.
func (r resource) CoresOf(i int, t Topology) []int {
	if !r.WholeDevice {
		return []int{i}
	}
	cores := make([]int, t.CoresPerDevice)
	for k := range cores {
		cores[k] = i*t.CoresPerDevice + k
	}
	return cores
}

// contiguousRun picks size units from available: the lowest-index contiguous block that holds every
// must-include unit. The Neuron runtime needs contiguous cores/devices, and kubelet follows this preference.
// When no such block exists it falls back to the must-include units plus the lowest others (kubelet would
// allocate the same way without a preference). The result is sorted.
func contiguousRun(available, mustInclude []int, size int) []int {
	free := map[int]bool{}
	for _, u := range append(slices.Clone(available), mustInclude...) {
		free[u] = true
	}
	starts := make([]int, 0, len(free))
	for u := range free {
		starts = append(starts, u)
	}
	slices.Sort(starts)
	if size <= 0 {
		return nil
	}
	for _, s := range starts {
		fits := true
		for u := s; u < s+size && fits; u++ {
			fits = free[u]
		}
		for _, m := range mustInclude {
			fits = fits && m >= s && m < s+size
		}
		if fits {
			run := make([]int, size)
			for k := range run {
				run[k] = s + k
			}
			return run
		}
	}
	picked := slices.Clone(mustInclude)
	for _, u := range starts {
		if len(picked) >= size {
			break
		}
		if !slices.Contains(picked, u) {
			picked = append(picked, u)
		}
	}
	slices.Sort(picked)
	return picked
}
