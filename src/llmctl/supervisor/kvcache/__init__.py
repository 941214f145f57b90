"""Saved KV caches (`keep_kv`): llama-server's slots written to disk before an unload, read back
after a reload, so a long conversation is not processed again.

key.py    the launch key a saved slot must match, and the folder name of a profile
files.py  the kv state folder: profile folders, index.json, checksums, status listing, forget
decide.py the pure decisions: what to save and evict under the caps, what may be restored
server.py llama-server's /slots calls (list, save, restore)
hooks.py  the supervisor's hooks: prepare_launch, save_slots, restore_slots

The limits themselves (`KeepKv`) belong to the launch (supervisor/launch.py). Importing the
package imports none of its modules.
"""
