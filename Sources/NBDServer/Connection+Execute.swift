// Runs one request against the virtual disk on a worker thread and sends its reply in the
// form the session negotiated: simple, structured, or extended.

import CowStore
import CowSupport
import Logging
import NBDProtocol

extension Connection {
    /// Most extents one block status chunk lists; clients ask again for the rest. Its payload
    /// fits any maximum payload cowbd offers (the spec's limit on a reply's variable part).
    static let maxExtentCount = 16384

    func execute(_ job: RequestWorker.Job, _ worker: RequestWorker) {
        switch job {
        case .execute(let request):
            let startNanoseconds = monotonicNanoseconds()
            do {
                try perform(request, startNanoseconds: startNanoseconds, worker)
            } catch {
                fail(request, error, startNanoseconds: startNanoseconds, worker)
            }
        case .fail(let request, let error):
            fail(request, error, startNanoseconds: monotonicNanoseconds(), worker)
        case .reject(let header, let rejection):
            server.metrics.recordRejection(rejection.error)
            logger.info(
                "request refused: \(rejection.message)", metadata: ["type": "\(header.type)"])
            replyError(
                rejection.error, message: rejection.message, cookie: header.cookie,
                offset: header.offset,
                isRead: header.type == Command.read.rawValue, worker)
        case .sendUnsentReply:
            sendUnsentReply()
        case .stop:
            break
        }
    }

    /// Counts, logs and replies the error of a request that failed.
    private func fail(
        _ request: Request, _ error: any Error, startNanoseconds: UInt64, _ worker: RequestWorker
    ) {
        let code = ErrorMapping.nbdError(for: error)
        server.metrics.recordRequest(
            request.command, byteCount: request.length,
            startNanoseconds: startNanoseconds, error: code)
        logger.warning(
            "request failed: \(error)",
            metadata: [
                "command": "\(request.command)", "offset": "\(request.offset)",
                "length": "\(request.length)", "nbdError": "\(code)",
            ])
        replyError(
            code, message: "\(error)", cookie: request.cookie, offset: request.offset,
            isRead: request.command == .read, worker)
    }

    /// Counts a request done, before its reply goes out: a client that has its reply finds it
    /// in the metrics.
    private func recordDone(_ request: Request, startNanoseconds: UInt64) {
        server.metrics.recordRequest(
            request.command, byteCount: request.length,
            startNanoseconds: startNanoseconds, error: nil)
    }

    private func perform(_ request: Request, startNanoseconds: UInt64, _ worker: RequestWorker)
        throws
    {
        let disk = server.disk
        let fua = request.flags.contains(.fua)
        if logsRequests {
            logger.trace(
                "request",
                metadata: [
                    "command": "\(request.command)", "offset": "\(request.offset)",
                    "length": "\(request.length)",
                ])
        }
        switch request.command {
        case .read:
            let data = worker.payload.prefix(Int(request.length))
            try disk.read(at: request.offset, into: data)
            recordDone(request, startNanoseconds: startNanoseconds)
            replyRead(request, UnsafeRawBufferPointer(data), worker)
            return
        case .write:
            let data = UnsafeRawBufferPointer(worker.payload.prefix(Int(request.length)))
            try disk.write(at: request.offset, from: data, fua: fua, scratch: worker.scratch)
        case .flush:
            try disk.flush()
        case .trim:
            try disk.trim(at: request.offset, byteCount: request.length, fua: fua)
        case .writeZeroes:
            try disk.writeZeroes(
                at: request.offset, byteCount: request.length,
                mayPunch: !request.flags.contains(.noHole),
                fast: request.flags.contains(.fastZero), fua: fua, scratch: worker.scratch)
        case .cache:
            try disk.prefetch(at: request.offset, byteCount: request.length)
        case .blockStatus:
            try replyBlockStatus(request, startNanoseconds: startNanoseconds, worker)
            return
        case .disconnect:
            preconditionFailure("DISC is handled by the reader")
        }
        recordDone(request, startNanoseconds: startNanoseconds)
        replySuccess(cookie: request.cookie, offset: request.offset, worker)
    }

    private func replySuccess(cookie: UInt64, offset: UInt64, _ worker: RequestWorker) {
        let count: Int
        if worker.replyForm.extended {
            count = Reply.encodeChunk(
                flags: replyFlagDone, type: .none, cookie: cookie, requestOffset: offset,
                payloadByteCount: 0,
                extended: true, into: worker.header)
        } else {
            count = Reply.encodeSimple(error: 0, cookie: cookie, into: worker.header)
        }
        sendReply(
            UnsafeRawBufferPointer(rebasing: worker.header[..<count]),
            UnsafeRawBufferPointer(start: nil, count: 0))
    }

    func replyRead(_ request: Request, _ data: UnsafeRawBufferPointer, _ worker: RequestWorker) {
        guard !worker.replyForm.structured || data.count > 0 else {
            // OFFSET_DATA must carry at least one byte: an empty read is just "done".
            replySuccess(cookie: request.cookie, offset: request.offset, worker)
            return
        }
        let count = Self.encodeReadReplyHeader(
            request, dataByteCount: data.count, worker.replyForm, into: worker.header)
        sendReply(UnsafeRawBufferPointer(rebasing: worker.header[..<count]), data)
    }

    /// The header of a read's reply carrying `dataByteCount` bytes (at least one if
    /// structured): a simple reply, or one OFFSET_DATA chunk. Returns its length.
    static func encodeReadReplyHeader(
        _ request: Request, dataByteCount: Int, _ replyForm: ReplyForm,
        into header: UnsafeMutableRawBufferPointer
    ) -> Int {
        guard replyForm.structured else {
            return Reply.encodeSimple(error: 0, cookie: request.cookie, into: header)
        }
        return Reply.encodeReadChunkHeader(
            cookie: request.cookie, offset: request.offset, dataByteCount: dataByteCount,
            extended: replyForm.extended, into: header)
    }

    func replyError(
        _ code: ErrorCode, message: String, cookie: UInt64, offset: UInt64, isRead: Bool,
        _ worker: RequestWorker
    ) {
        let count =
            worker.replyForm.structured
            ? Reply.encodeErrorChunk(
                ErrorChunkPayload(error: code.rawValue, message: message), cookie: cookie,
                requestOffset: offset, extended: worker.replyForm.extended, into: worker.header)
            : Reply.encodeSimple(error: code.rawValue, cookie: cookie, into: worker.header)
        sendReply(
            UnsafeRawBufferPointer(rebasing: worker.header[..<count]),
            UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// One chunk per negotiated context, the last marked done. A dirty-bitmap context whose
    /// checkpoint was deleted since the handshake fails the request (EINVAL) before any chunk.
    private func replyBlockStatus(
        _ request: Request, startNanoseconds: UInt64, _ worker: RequestWorker
    ) throws {
        guard request.length > 0 else {
            throw StoreError.invalidArgument("block status of zero bytes")
        }
        let maxExtentCount = request.flags.contains(.requestOne) ? 1 : Self.maxExtentCount
        var extents: [SourceExtent] = []
        var descriptorLists: [[BlockStatusDescriptor]] = []
        for context in session.metaContexts {
            switch context {
            case .baseAllocation, .allocationDepth:
                if extents.isEmpty {
                    extents = try server.disk.extents(
                        at: request.offset, byteCount: request.length,
                        maxExtentCount: maxExtentCount)
                }
                descriptorLists.append(
                    extents.map { extent in
                        let status: UInt32
                        if context == .baseAllocation {
                            status =
                                (extent.isHole ? AllocationState.hole : 0)
                                | (extent.readsAsZeros ? AllocationState.zero : 0)
                        } else {
                            status = extent.depth
                        }
                        return BlockStatusDescriptor(byteCount: extent.byteCount, status: status)
                    })
            case .dirtyBitmap(let checkpointName, _):
                descriptorLists.append(
                    try server.disk.changedExtents(
                        sinceCheckpoint: checkpointName, at: request.offset,
                        byteCount: request.length, maxExtentCount: maxExtentCount
                    ).map {
                        BlockStatusDescriptor(
                            byteCount: $0.byteCount,
                            status: $0.isChanged ? MetaContext.dirtyState : 0)
                    })
            }
        }
        recordDone(request, startNanoseconds: startNanoseconds)
        let extended = session.extendedHeaders
        for (position, (context, descriptors)) in zip(session.metaContexts, descriptorLists)
            .enumerated()
        {
            let payload = worker.payload.prefix(
                BlockStatusPrefix.payloadByteCount(
                    descriptorCount: descriptors.count, extended: extended))
            var used = BlockStatusPrefix(
                contextID: context.id, descriptorCount: UInt32(descriptors.count)
            ).encode(into: payload, extended: extended)
            for descriptor in descriptors {
                used += descriptor.encode(into: payload, at: used, extended: extended)
            }
            let isLast = position == session.metaContexts.count - 1
            let count = Reply.encodeChunk(
                flags: isLast ? replyFlagDone : 0,
                type: extended ? .blockStatusExtended : .blockStatus,
                cookie: request.cookie, requestOffset: request.offset,
                payloadByteCount: UInt64(used),
                extended: extended, into: worker.header)
            sendReply(
                UnsafeRawBufferPointer(rebasing: worker.header[..<count]),
                UnsafeRawBufferPointer(rebasing: payload[..<used]))
        }
    }
}
