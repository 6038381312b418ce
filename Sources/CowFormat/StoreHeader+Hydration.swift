// Where a store's hydration bitmap lives and the feature bit that says it does
// (docs/FORMAT.md, "Hydration"). Layout only; the bitmap's bits are ChunkBitmap's.

extension StoreHeader {
    /// Whether the file ends with a hydration bitmap (incompatible feature bit 2).
    public var hasHydration: Bool { incompatibleFeatures & Self.hydrationFeature != 0 }

    /// Records whether the file has a hydration bitmap.
    public mutating func setHasHydration(_ hasHydration: Bool) {
        setIncompatibleFeature(Self.hydrationFeature, hasHydration)
    }

    /// Where the hydration bitmap starts: where a checkpoint area would end, whether or not the
    /// store has one, so neither region ever moves the other.
    public var hydrationBitmapByteOffset: UInt64 {
        checkpointBitmapByteOffset(slot: CheckpointTable.slotCount)
    }
}
