# shellcheck shell=sh
# Move a file uploaded as a non-root user into place as root (SshConnection.put with
# sudo): copy it next to its destination under a temporary name, give it owner and
# mode, then rename it over the destination; the private upload directory always goes.
#   AMIC_UPLOAD_FILE  the uploaded file
#   AMIC_UPLOAD_DIR   the user's private directory (removed)
#   AMIC_UPLOAD_PART  the temporary name, in the destination's directory
#   AMIC_UPLOAD_DEST  the destination
#   AMIC_UPLOAD_MODE  its mode, in octal
cp "$AMIC_UPLOAD_FILE" "$AMIC_UPLOAD_PART" && chown 0:0 "$AMIC_UPLOAD_PART" &&
    chmod "$AMIC_UPLOAD_MODE" "$AMIC_UPLOAD_PART" && mv -f "$AMIC_UPLOAD_PART" "$AMIC_UPLOAD_DEST"
rc=$?
rm -rf "$AMIC_UPLOAD_DIR" "$AMIC_UPLOAD_PART"
exit "$rc"
